"""``ragline serve``: pipelines as an HTTP service.

FastAPI on uvicorn. Concurrent requests for one pipeline are gathered into
one batch and run on that pipeline's own worker thread (the engine is
batch-first; the event loop never blocks on model work); streams are
Server-Sent Events; ``/v1/chat/completions`` speaks OpenAI's protocol, so
any OpenAI client can use a pipeline as its model. See docs/serving.md.
"""

from ragline.serve.app import create_app
from ragline.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
