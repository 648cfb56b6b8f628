"""The HTTP routes of `genpipe serve`.

/invocations answers MLflow's scoring protocol with MLflow's own code
(`mlflow.pyfunc.scoring_server.invocations`: dataframe_split, dataframe_records, inputs,
instances, CSV), so a client of `mlflow models serve` works unchanged. Each request is
answered by the version served when it began (its number in the X-Genpipe-Version header).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import Response

from genpipe import serving
from genpipe.serve import pictures
from genpipe.serve.follow import Follower
from genpipe.serve.webhook import Verifier

VERSION_HEADER = "X-Genpipe-Version"
WEBHOOK_PATH = "/webhook"
WEBHOOK_MAX_BYTES = 1 << 20


def build(follower: Follower, verifier: Verifier | None) -> FastAPI:
    """The ASGI app serving what `follower` holds; `verifier` checks webhook posts (None:
    no webhook, posts are refused)."""
    app = FastAPI(title="genpipe serve", docs_url=None, redoc_url=None, openapi_url=None)
    routes = Routes(follower, verifier)
    app.add_api_route("/invocations", routes.invoke, methods=["POST"])
    app.add_api_route("/ping", routes.ping, methods=["GET"])
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/version", routes.version, methods=["GET"])
    app.add_api_route("/sample.png", routes.sample, methods=["GET"])
    app.add_api_route("/reconstruct", routes.reconstruct, methods=["POST"])
    app.add_api_route(WEBHOOK_PATH, routes.webhook, methods=["POST"])
    return app


class TimedOut(Exception):
    """A request that took longer than the scoring server's timeout: HTTP 504."""


def text(line: str, status: int) -> Response:
    return Response(line + "\n", status_code=status, media_type="text/plain")


class Routes:
    def __init__(self, follower: Follower, verifier: Verifier | None) -> None:
        from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

        self.follower, self.verifier = follower, verifier
        self.timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()

    async def answered(self, work) -> tuple[Any, str]:
        """work(served) in a worker thread, on the version served when the request began,
        within MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT seconds as `mlflow models serve`."""

        def held():
            with self.follower.serving() as served:
                return work(served), served.version

        try:
            return await asyncio.wait_for(asyncio.to_thread(held), timeout=self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise TimedOut(f"request: expected an answer within {self.timeout} s "
                           "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)") from None  # fmt: skip

    async def invoke(self, request: Request) -> Response:
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import invocations

        body = await request.body()
        kind = request.headers.get("content-type") or "application/json"
        try:
            result, version = await self.answered(
                lambda served: invocations(body, kind, served.model, served.input_schema))
        except MlflowException as exc:
            return Response(exc.serialize_as_json(), status_code=exc.get_http_status_code(),
                            media_type="application/json")  # fmt: skip
        except TimedOut as exc:
            return text(str(exc), 504)
        return Response(result.response, status_code=result.status, media_type=result.mimetype,
                        headers={VERSION_HEADER: version})  # fmt: skip

    async def ping(self) -> Response:
        return Response("\n", status_code=200 if self.follower.current else 503,
                        media_type="application/json")  # fmt: skip

    async def health(self) -> Response:
        return Response(json.dumps(self.follower.health(), indent=1),
                        status_code=200 if self.follower.current else 503,
                        media_type="application/json")  # fmt: skip

    async def version(self) -> Response:
        import mlflow

        import genpipe

        served = self.follower.current
        about = served.describe() if served else {"model": self.follower.name, "version": None}
        about.update(genpipe=genpipe.__version__, mlflow=mlflow.__version__)
        return Response(json.dumps(about, indent=1), media_type="application/json")

    async def sample(self, seed: str | None = None, seeds: str | None = None) -> Response:
        """GET /sample.png?seed=3 (one image) or ?seeds=0-15 (a grid): the GAN's."""
        from mlflow.exceptions import MlflowException

        served = self.follower.current
        if served is not None and served.kind != "gan":
            return text(f"{self.follower.name} is an autoencoder: POST a PNG or JPEG to "
                        "/reconstruct", 404)  # fmt: skip
        try:
            chosen = pictures.seeds(seed, seeds, serving.max_images())
            frame = pd.DataFrame({"seed": np.array(chosen, dtype=np.int64)})
            image, version = await self.answered(lambda s: pictures.png(s.predict(frame)))
        except (pictures.BadRequest, ValueError) as exc:
            return text(str(exc), 400)
        except MlflowException as exc:
            return text(exc.message, exc.get_http_status_code())
        except TimedOut as exc:
            return text(str(exc), 504)
        return Response(image, media_type="image/png", headers={VERSION_HEADER: version})

    async def reconstruct(self, request: Request) -> Response:
        """POST /reconstruct with a PNG or JPEG: the autoencoder's reconstruction, a PNG."""
        served = self.follower.current
        if served is not None and served.kind != "autoencoder":
            return text(f"{self.follower.name} is a GAN: GET /sample.png?seed=N", 404)
        body = await _capped(request, pictures.UPLOAD_MAX_BYTES)
        if body is None:
            return text(f"expected an image of at most {pictures.UPLOAD_MAX_BYTES} bytes", 413)

        def work(served):
            images = pictures.upload(body, served.channels, served.image_size)
            return pictures.png(served.predict(images))

        try:
            image, version = await self.answered(work)
        except pictures.BadRequest as exc:
            return text(str(exc), 400)
        except TimedOut as exc:
            return text(str(exc), 504)
        return Response(image, media_type="image/png", headers={VERSION_HEADER: version})

    async def webhook(self, request: Request) -> Response:
        """MLflow's post that an alias moved: verified, then the follower woken."""
        body = await _capped(request, WEBHOOK_MAX_BYTES)
        if self.verifier is None:
            return text("webhook: this server follows its alias by polling alone", 404)
        if body is None:
            return text(f"webhook refused: expected a body of at most {WEBHOOK_MAX_BYTES} "
                        "bytes", 413)  # fmt: skip
        refusal = self.verifier.refusal(request.headers, body)
        if refusal:
            return text(f"webhook refused: {refusal}", 401)
        try:
            post = json.loads(body)
            data = post.get("data") or {}
            ours = (post.get("entity") == "model_version_alias" and
                    data.get("name") == self.follower.name and
                    data.get("alias") == self.follower.alias)  # fmt: skip
        except (ValueError, AttributeError):
            return text("webhook: expected MLflow's JSON payload", 400)
        if ours:
            self.follower.nudge(again=post.get("action") == "created")
        return Response(json.dumps({"taken": True, "follows": ours}),
                        media_type="application/json")  # fmt: skip


async def _capped(request: Request, most: int) -> bytes | None:
    """The request's body, or None when it is longer than `most` bytes (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
