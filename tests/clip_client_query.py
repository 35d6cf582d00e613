"""Query a server with clip-retrieval's own ClipClient; print its answer as JSON.

Run with the python of a venv holding the clip-retrieval package (tests/serve_server.py makes
one). The package's __init__ imports its whole server (flask, torch, wandb, ...), which the
client does not use: the package is registered bare, so only clip_client.py runs, unmodified.

    python clip_client_query.py URL INDEX NUM_IMAGES text "a red circle"
    python clip_client_query.py URL INDEX NUM_IMAGES image PATH
    python clip_client_query.py URL INDEX NUM_IMAGES embedding '[0.1, ...]'
"""

import importlib.util
import json
import sys
import types

spec = importlib.util.find_spec("clip_retrieval")
package = types.ModuleType("clip_retrieval")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["clip_retrieval"] = package

from clip_retrieval.clip_client import ClipClient  # noqa: E402

url, index, num_images, kind, value = sys.argv[1:6]
client = ClipClient(url=url, indice_name=index, num_images=int(num_images))
if kind == "text":
    answer = client.query(text=value)
elif kind == "image":
    answer = client.query(image=value)
else:
    answer = client.query(embedding_input=json.loads(value))
print(json.dumps(answer))
