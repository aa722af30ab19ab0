"""Data in: ``submissions`` (the queue), ``ingest`` (staging, manifests), ``validate`` (the
rules and the report), ``neardup``, ``examine`` (against the champion), ``dataset``,
``versions`` (DVC), ``intake`` (check and add a batch), ``sample`` (the embedded one)."""
