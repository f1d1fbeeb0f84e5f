"""The network side: the Starlette app, uvicorn, connections, access control and limits."""
