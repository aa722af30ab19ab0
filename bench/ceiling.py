"""The HTTP ceiling for `bench/serve.py`: a BentoML service that takes an upload and decodes
it exactly as Refit's `/predict` does, then answers without a model.

Run by the bench: bentoml serve bench.ceiling:Ceiling --port PORT
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse

from pipelines.images.decode import BadImage, decode_upload
from serving.worker import settle  # the same request timeout and frozen heap as Refit's

app = FastAPI(title="HTTP ceiling")


@bentoml.service(name="ceiling", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/")
class Ceiling:
    def __init__(self) -> None:
        settle()

    @app.post("/predict")
    async def predict(self, image: Annotated[UploadFile, File()]):
        try:
            pixels = decode_upload(await image.read(), (32, 32), 40_000_000)
        except BadImage as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"shape": list(pixels.shape)}
