"""A local emulator of BetterToken's image edit API, for demos, tests and offline DAG tests.

Import from the modules: ``app`` (the FastAPI app), ``server`` (uvicorn in a thread, and a control
client). This package's own import loads nothing, so ``python -m`` and the console script stay cheap.
"""
