"""The shell of Refit: settings, the `refit` CLI, and the local platform's servers."""
