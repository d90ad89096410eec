"""/healthz and /readyz: open to all, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from search.serve.dependencies import ServiceDep
from search.serve.errors import hide_folders

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive.")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded and store open.")
def readyz(service: ServiceDep):
    if service.ready.is_set():
        return {"ready": True}
    failure = service.failure and hide_folders(str(service.failure), service)
    reason = f"failed: {failure}" if failure else "loading the models and the store"
    return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "2"})
