"""The app's routers, one per area; `create_app` includes them in this order.

- `health.py`: /healthz, /readyz (no key).
- `search.py`: POST /v1/search (a photo), /v1/search/text (API key).
- `catalogue.py`: /v1/products, /v1/images, /v1/info (API key).
- `feedback.py`: /v1/feedback (the feedback key, else the API key).
- `page.py`: / (the staff page).

Routers import the shared pieces (`dependencies`, `errors`, `uploads`), never each other.
"""
