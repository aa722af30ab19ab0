"""The shell of Refit (the roof): the `refit` CLI, the local platform's servers and the DVC
stage entry points. It may import every package; none imports it."""
