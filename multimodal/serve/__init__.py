"""`mmdiff serve`: an OpenAI-compatible server over the continuous batch (multimodal/sampling/batching.py).

scheduler.py runs the decoding thread, request_sampler.py turns a request's settings into its sampler,
protocol.py holds the request schemas and the OpenAI-style errors, app.py the routes and the live page,
server.py the server with its graceful drain. The model and how a chat becomes a prompt come from
multimodal/sources.py (a run or a released LLaDA folder), as for every other verb.
"""
