"""`clipsieve serve` as a real process: clip-retrieval's own ClipClient (the PyPI package, in a
venv of its own) gets the answers the wire format promises; the routes' limits hold."""

import http.client
import json
import subprocess
import urllib.request

import pytest

from assets.subsets import POLICY_DIR
from tests.serve_server import clip_client_python, post

INDEX = "laion400m"
QUERY = "a photo of a red circle"


@pytest.fixture(scope="module")
def server(served):
    return served


def client_query(server, kind: str, value: str, num_images: int = 8) -> list[dict]:
    result = subprocess.run([str(clip_client_python()), "tests/clip_client_query.py", f"{server['url']}/knn-service",
                             INDEX, str(num_images), kind, value], capture_output=True, text=True, timeout=120,
                            cwd=str(POLICY_DIR.parents[1]))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_clip_retrievals_client_gets_results_with_its_expected_fields(server):
    answer = client_query(server, "text", QUERY)
    assert isinstance(answer, list) and 0 < len(answer) <= 8
    assert all({"id", "similarity", "url", "caption", "image"} <= set(r) for r in answer)
    similarities = [r["similarity"] for r in answer]
    assert similarities == sorted(similarities, reverse=True)
    # The same body the client sends (its defaults: dedup, safety and violence on, aesthetic 9 at 0.5).
    status, headers, direct = post(f"{server['url']}/knn-service", {
        "text": QUERY, "image": None, "image_url": None, "embedding_input": None, "deduplicate": True,
        "use_safety_model": True, "use_violence_detector": True, "indice_name": INDEX, "use_mclip": False,
        "aesthetic_score": 9, "aesthetic_weight": 0.5, "modality": "image", "num_images": 8, "num_result_ids": 8})
    assert status == 200 and [r["id"] for r in direct] == [r["id"] for r in answer]
    removed = json.loads(headers["X-Clipsieve-Removed"])
    assert set(removed) == {"safe", "violence", "deduplicate"}


def test_the_client_searches_by_image_file_and_by_embedding(server, tmp_path):
    first = client_query(server, "text", QUERY, 1)[0]
    picture = tmp_path / "query.jpg"
    with urllib.request.urlopen(f"{server['url']}/api/image/{INDEX}/{first['id']}") as response:
        picture.write_bytes(response.read())
    by_image = client_query(server, "image", str(picture), 3)
    assert by_image[0]["similarity"] > 0.99  # the picture itself (or a planted copy)
    status, _, answer = post(f"{server['url']}/api/vector", {"indice_name": INDEX, "id": first["id"]})
    assert status == 200 and len(answer["vector"]) == 128  # the demo model's width
    by_embedding = client_query(server, "embedding", json.dumps(answer["vector"]), 3)
    assert by_embedding[0]["similarity"] > 0.99


def test_clip_fronts_requests_work_double_slash_text_plain_and_metadata(server):
    url = server["url"]
    request = urllib.request.Request(f"{url}/indices-list", headers={"Origin": "http://front.example"})
    with urllib.request.urlopen(request) as response:  # the front, served from elsewhere, may read it
        indices = json.loads(response.read())
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert INDEX in indices
    body = {"text": QUERY, "image": None, "image_url": None, "embedding_input": None, "modality": "image",
            "num_images": 4, "indice_name": INDEX, "num_result_ids": 50, "use_mclip": False, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": "", "aesthetic_weight": "0.5"}
    status, _, results = post(f"{url}//knn-service", body, {"Content-Type": "text/plain;charset=UTF-8"})
    assert status == 200 and all("caption" in r for r in results[:4]) and all(set(r) == {"id", "similarity"}
                                                                           for r in results[4:])
    ids = [r["id"] for r in results[4:8]]
    status, _, metadata = post(f"{url}//metadata", {"ids": ids, "indice_name": INDEX})
    assert status == 200 and [m["id"] for m in metadata] == ids
    assert all({"url", "caption"} <= set(m["metadata"]) for m in metadata)
    with urllib.request.urlopen(f"{url}/config.json") as response:
        assert json.loads(response.read())["defaultIndex"] == indices[0]


def test_bad_and_oversized_requests_and_foreign_writes_are_refused(server):
    url = server["url"]
    status, _, answer = post(f"{url}/knn-service", {"text": QUERY, "num_images": 2, "indice_name": INDEX})
    assert status == 400 and "modality" in answer["message"]
    request = urllib.request.Request(f"{url}/knn-service", data=b"not json", method="POST")
    try:
        urllib.request.urlopen(request)
        raise AssertionError("accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 400
    # A body declared past the limit is refused before a byte of it is read.
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/knn-service")
    connection.putheader("Content-Length", str(64 << 20))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    # A page elsewhere asking to send JSON to the write route gets no CORS permission.
    preflight = urllib.request.Request(f"{url}/api/policies", method="OPTIONS", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    try:
        with urllib.request.urlopen(preflight) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
    except urllib.error.HTTPError as error:
        assert "Access-Control-Allow-Origin" not in error.headers
    body = {"text": QUERY, "indice_name": INDEX, "name": "from_elsewhere", "limit": 5}
    status, _, answer = post(f"{url}/api/policies", body, {"Content-Type": "text/plain"})
    assert status == 400 and "application/json" in answer["message"]
    status, _, answer = post(f"{url}/api/policies", body, {"Content-Type": "application/json",
                                                            "Origin": "http://evil.example"})
    assert status == 400 and "another origin" in answer["message"]
    assert not (server["policies"] / "from_elsewhere.sql").exists()
    status, _, answer = post(f"{url}/api/policies", body, {"Content-Type": "application/json"})
    assert status == 200 and (server["policies"] / "from_elsewhere.sql").exists()
    for path in ("/static/../../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml"):
        try:
            urllib.request.urlopen(f"{url}{path}")
            raise AssertionError(f"{path} served")
        except urllib.error.HTTPError as error:
            assert error.code == 404
