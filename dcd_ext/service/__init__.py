"""The search service behind ``python -m dcd_ext.serve``: the model owner that answers batches of queries
(:mod:`.engine`), the micro-batcher that groups concurrent requests (:mod:`.batcher`), request checking
(:mod:`.requests`), the HTTP routes (:mod:`.app`) and the web page (``page/index.html``).

The ASGI stack (Starlette + uvicorn) is the ``serve`` extra: ``pip install "dcd_ext[serve]"``.
"""
