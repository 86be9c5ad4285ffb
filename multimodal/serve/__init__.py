"""`mmdiff serve`: an OpenAI-compatible server over the continuous batch (multimodal/sampling/batching.py).

scheduler.py runs the decoding thread, backend.py turns requests into prompts for a run or a released
LLaDA folder, protocol.py holds the request schemas and the OpenAI-style errors, app.py the routes, the
live page and the server with its graceful drain.
"""
