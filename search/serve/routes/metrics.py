"""GET /metrics: the service's metrics in Prometheus' text format, for a scraper (`metrics.py` lists them).

It takes the metrics key (`dependencies.metrics_key`): CATALOGUE_METRICS_KEY
when set, else the API key; with neither it is open, like /healthz. It
answers while the models load too: the load is what an operator watches then.
The format is the one the scraper asks for (OpenMetrics or the classic text).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from search.serve.dependencies import ServiceDep, metrics_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(metrics_key)])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, service: ServiceDep) -> Response:
    body, content_type = service.metrics.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})
