"""The FastAPI app: routes, error handlers, request observation, and a
lifespan that starts every pipeline's batcher, warms the stages in the
background and, at shutdown, lets the work already queued finish."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ragline.engine.pipeline import Pipeline
from ragline.serve import openai_compat, routes
from ragline.serve.errors import install_error_handlers
from ragline.serve.hosts import AllowedHosts
from ragline.serve.observe import ObserveRequests
from ragline.serve.settings import ServeSettings
from ragline.serve.state import ServerState


def create_app(pipelines: Mapping[str, Pipeline], settings: ServeSettings | None = None,
               on_ready: Callable[[], None] | None = None,
               on_warm_up_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """An app serving ``pipelines`` by name. ``on_ready`` is called once
    every stage is warm; ``on_warm_up_failure`` if one cannot be loaded (the
    command stops the server then)."""
    state = ServerState(pipelines, settings or ServeSettings(), on_ready, on_warm_up_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        yield
        await state.close()

    # The interactive docs and the schema are off unless asked for, and then
    # behind the token like every /v1 route.
    app = FastAPI(title="ragline", summary="Retrieval and RAG pipelines over HTTP", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ragline = state
    app.include_router(routes.router)
    app.include_router(routes.api)
    app.include_router(openai_compat.router)
    if state.settings.docs:
        app.include_router(routes.docs_router(app))
    install_error_handlers(app)
    app.add_middleware(ObserveRequests, metrics=state.metrics)
    app.add_middleware(AllowedHosts, hosts=state.settings.allowed_hosts)  # outermost: refuses before anything runs
    return app
