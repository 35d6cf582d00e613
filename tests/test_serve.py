"""The search service (orchestration/serve/) over the materialized sample crawl: clip-retrieval's
answers, the filters and what they removed, paging, counts, explanations, saved policies and
downloads, called directly and through a real `clipsieve serve` process."""

import base64
import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from assets.definitions.flyt import FLYT_VIEWS
from assets.indices import encode_query
from assets.subsets import POLICY_DIR, load_policies
from orchestration.serve.search import SAFE_MAX_PUNSAFE
from orchestration.serve.service import SearchService
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, ClipModelResource
from resources.crawl import CrawlResource
from resources.lake import LakeResource

INDEX = "laion400m"
QUERY = "a photo of a red circle"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policies")
    for path in POLICY_DIR.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def service(materialized, policy_dir, tmp_path_factory):
    clip = ClipModelResource(model_name=DEMO_MODEL, pretrained=DEMO_CHECKPOINT)
    opened = SearchService(LakeResource(root=str(materialized["lake"])), clip.load(), clip.model_id, policy_dir,
                           tmp_path_factory.mktemp("serve-cache"), DEMO_CHECKPOINT,
                           CrawlResource(root=str(materialized["crawl"])))
    yield opened
    opened.close()


def knn(service, **fields):
    body = {"text": QUERY, "modality": "image", "num_images": 10, "indice_name": INDEX, **fields}
    return service.knn(body)


def test_every_materialized_index_is_served_with_a_table_row_per_vector(service):
    # The demo lake is materialized without --flyt: FLYT's policy has no index, and says why.
    learned = {p.name for p in load_policies(POLICY_DIR) if any(p.reads(view) for view in FLYT_VIEWS)}
    assert set(service.indices_list()) == {p.name for p in load_policies(POLICY_DIR)} - learned
    assert set(service.unavailable) == learned == {"flyt_scs", "mflyt_scs"}
    for index in service.indices.values():
        assert index.table.num_rows == index.count > 0
        assert index.table.column("row").to_pylist() == list(range(index.count))
        assert index.column(f"in_{index.name}").all()  # every row is a member of its own subset
        violence = index.column("pviolence")
        assert np.all((violence >= 0) & (violence <= 1))


def test_knn_answers_as_clip_retrieval_does_in_faiss_order(service):
    """Filters off: the results are the index's own nearest neighbours, best first; the first
    num_images carry url and caption, the rest id and similarity only."""
    results, page = knn(service, num_images=5, num_result_ids=20, use_safety_model=False, deduplicate=False)
    assert len(results) == 20 and page.removed == {}
    assert all(set(r) == {"url", "caption", "image", "id", "similarity"} for r in results[:5])
    assert all(set(r) == {"id", "similarity"} for r in results[5:])
    index = service.indices[INDEX]
    query = encode_query(service.clip, text=QUERY)
    scores, ids = index.index.search(query, 20)
    assert [r["id"] for r in results] == ids[0].tolist()
    np.testing.assert_allclose([r["similarity"] for r in results], scores[0], rtol=1e-5)
    first = index.rows([results[0]["id"]], ["url", "caption", "shard", "tar_member"])[0]
    assert results[0]["url"] == first["url"] and results[0]["caption"] == first["caption"]
    picture = Image.open(io.BytesIO(base64.b64decode(results[0]["image"])))  # from the crawl's tar
    assert picture.size[0] > 0
    assert service.metadata({"ids": [results[0]["id"]], "indice_name": INDEX}) == \
        [{"id": results[0]["id"], "metadata": {k: results[0][k] for k in ("url", "caption", "image")}}]


def test_safe_mode_and_dedup_are_on_by_default_and_say_what_they_removed(service):
    index = service.indices[INDEX]
    results, page = knn(service, num_images=40, num_result_ids=40)
    rows = np.array([r["id"] for r in results])
    assert set(page.removed) == {"safe", "deduplicate"}
    assert np.all(index.column("punsafe")[rows] <= SAFE_MAX_PUNSAFE)
    groups = index.column("dedup_group")[rows]
    assert len(set(groups)) == len(groups)
    # The counts are those of the neighbours searched, counted independently here.
    scores, ids = index.index.search(encode_query(service.clip, text=QUERY), page.searched)
    unsafe = ~(index.column("punsafe")[ids[0]] <= SAFE_MAX_PUNSAFE)
    assert page.removed["safe"] == int(unsafe.sum())
    kept = ids[0][~unsafe]
    assert page.removed["deduplicate"] == len(kept) - len(set(index.column("dedup_group")[kept]))


def test_a_filter_that_removes_most_results_widens_the_search_instead_of_emptying_the_page(service):
    index = service.indices[INDEX]
    high = float(np.nanquantile(index.column("aesthetic"), 0.9))
    answer = service.search({"text": QUERY, "indice_name": INDEX, "limit": 20,
                             "filters": {"ranges": {"aesthetic": [high, None]}}})
    assert len(answer["results"]) == min(20, answer["matched"]) > 0
    assert all(r["scores"]["aesthetic"] >= high for r in answer["results"])
    assert answer["removed"]["aesthetic"] > 0 and answer["searched"] > 64  # widened past the first search


def test_pages_continue_one_another(service):
    whole = service.search({"text": QUERY, "indice_name": INDEX, "offset": 0, "limit": 30})
    first = service.search({"text": QUERY, "indice_name": INDEX, "offset": 0, "limit": 15})
    second = service.search({"text": QUERY, "indice_name": INDEX, "offset": 15, "limit": 15})
    assert [r["key"] for r in first["results"] + second["results"]] == [r["key"] for r in whole["results"]]


def test_policy_membership_filters(service):
    index = service.indices[INDEX]
    other = next(p for p in index.policies if p != INDEX and not index.column(f"in_{p}").all())
    inside = service.search({"text": QUERY, "indice_name": INDEX, "filters": {"in_policies": [other]}})
    outside = service.search({"text": QUERY, "indice_name": INDEX, "filters": {"out_policies": [other]}})
    assert inside["results"] and all(r["policies"][other] for r in inside["results"])
    assert outside["results"] and not any(r["policies"][other] for r in outside["results"])
    with pytest.raises(ValueError, match="no materialized subset"):
        service.search({"text": QUERY, "indice_name": INDEX, "filters": {"in_policies": ["no_such"]}})


def test_count_above_a_threshold_equals_an_exact_count(service):
    index = service.indices[INDEX]
    query = encode_query(service.clip, text=QUERY)
    similarities = index.index.reconstruct_n(0, index.count) @ query[0]  # the demo's indices are flat
    threshold = float(np.quantile(similarities, 0.95))
    answer = service.count({"text": QUERY, "indice_name": INDEX, "threshold": threshold})
    assert answer["exact"]
    assert abs(answer["count"] - int((similarities >= threshold).sum())) <= 1  # a tie at the threshold at most


def test_the_aesthetic_fields_move_the_query_towards_pictures_rated_so(service):
    index = service.indices[INDEX]

    def mean_aesthetic(**fields) -> float:
        results, _ = knn(service, num_images=30, **fields)
        return float(np.nanmean(index.column("aesthetic")[[r["id"] for r in results]]))

    top = int(np.clip(np.rint(np.nanquantile(index.column("aesthetic"), 0.9)), 0, 9))
    assert index.aesthetic[top].any()
    assert mean_aesthetic(aesthetic_score=top, aesthetic_weight=2.0) > mean_aesthetic()


def test_explain_says_why_a_result_is_in_or_out_of_each_policy(service):
    answer = service.search({"text": QUERY, "indice_name": INDEX, "limit": 40})
    result = next(r for r in answer["results"] if not all(r["policies"].values()))
    explanation = service.explain(result["key"])
    for policy, member in result["policies"].items():
        assert explanation["policies"][policy]["kept"] == member
        if not member:
            assert explanation["policies"][policy]["dropped_by"]


def test_a_saved_search_is_a_policy_whose_subset_is_the_results(service, policy_dir, catalog):
    body = {"text": QUERY, "indice_name": INDEX, "limit": 25, "name": "red_circles",
            "filters": {"ranges": {"similarity": [0.0, None]}}}
    saved = service.save_policy(body)
    assert saved["file"] == "red_circles.sql" and saved["members"] == 25
    policy = next(p for p in load_policies(policy_dir) if p.name == "red_circles")
    members = catalog.query(_without_sets(policy.sql, catalog))
    found = service.search({**body, "offset": 0})
    assert {(r["key"], r["shard"]) for r in found["results"]} == \
        set(zip(members.column("key").to_pylist(), members.column("shard").to_pylist()))
    with pytest.raises(ValueError, match="exists already"):
        service.save_policy(body)
    for bad in ("../escape", "Red", "a b", ""):
        with pytest.raises(ValueError, match="policy name"):
            service.save_policy({**body, "name": bad})
    assert sorted(p.name for p in policy_dir.iterdir()) == sorted([*(p.name for p in POLICY_DIR.iterdir()),
                                                                   "red_circles.sql"])
    # The next load of the definitions has its subset, index and audit.
    from orchestration.definitions import build_definitions

    keys = {k.to_user_string() for k in build_definitions(policy_dir=policy_dir).resolve_asset_graph()
            .get_all_asset_keys()}
    assert {"red_circles_subset", "red_circles_index", "red_circles_audit"} <= keys


def _without_sets(sql: str, catalog) -> str:
    """Run the file's SET VARIABLE lines on the catalog; its SELECT."""
    statements = catalog.connection.extract_statements(sql)
    for statement in statements[:-1]:
        catalog.connection.execute(statement.query)
    return statements[-1].query


def test_results_download_as_img2dataset_parquet_and_datacomp_uids(service):
    body = {"text": QUERY, "indice_name": INDEX, "limit": 12}
    data, name = service.export(body, "parquet")
    table = pq.read_table(io.BytesIO(data))
    found = service.search(body)["results"]
    assert name.endswith(".parquet") and table.column_names == ["url", "caption"]
    assert table.column("url").to_pylist() == [r["url"] for r in found]
    data, name = service.export(body, "uids")
    uids = np.load(io.BytesIO(data))
    assert uids.dtype == np.dtype("u8,u8") and len(uids) == len(found)
    assert uids.tolist() == sorted(uids.tolist())  # sorted (high, low) halves, as DataComp reads them
    with pytest.raises(ValueError, match="unknown export"):
        service.export(body, "csv")


def test_bad_requests_get_clear_errors(service):
    with pytest.raises(ValueError, match="missing field 'modality'"):
        service.knn({"text": QUERY, "num_images": 3, "indice_name": INDEX})
    with pytest.raises(ValueError, match="only image indices"):
        knn(service, modality="text")
    with pytest.raises(ValueError, match="no index 'nope'"):
        knn(service, indice_name="nope")
    with pytest.raises(ValueError, match="image_url queries are off"):
        knn(service, text=None, image_url="http://127.0.0.1:9/x.jpg")
    with pytest.raises(ValueError, match="not base64"):
        knn(service, text=None, image="%%%")
    with pytest.raises(ValueError, match="num_result_ids must be within"):
        knn(service, num_result_ids=10**9)
    with pytest.raises(ValueError, match="query has 3 dimensions"):
        knn(service, text=None, embedding_input=[0.1, 0.2, 0.3])


def test_search_by_an_uploaded_image_and_by_a_result_finds_that_picture_first(service, materialized):
    index = service.indices[INDEX]
    row = index.rows([0], ["shard", "tar_member"])[0]
    picture = CrawlResource(root=str(materialized["crawl"]))
    data = dict(picture.iter_tar(row["shard"], {row["tar_member"]}))[row["tar_member"]]
    by_upload, _ = knn(service, text=None, image=base64.b64encode(data).decode(), deduplicate=False)
    by_row = service.search({"like": 0, "indice_name": INDEX, "deduplicate": False})["results"]
    assert by_row[0]["id"] == 0 and by_row[0]["similarity"] > 0.99
    assert by_upload[0]["similarity"] > 0.99  # the picture itself (or a copy of it, planted)
    assert 0 in [r["id"] for r in by_upload if r["similarity"] > 0.99]


def test_a_large_page_from_an_ivf_probes_enough_lists_without_changing_the_index():
    """An IVF tuned to nprobe 1 finds the top 10; a page of 2,000 needs more lists: the search
    probes enough of them for that request only."""
    import faiss
    import pyarrow as pa

    from orchestration.serve.search import Filters, search
    from orchestration.serve.served_index import AESTHETIC_LEVELS, ServedIndex

    vectors = np.random.default_rng(0).standard_normal((5_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.index_factory(16, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 1
    served = ServedIndex("ivf", index, pa.table({"row": np.arange(5_000)}), np.zeros((AESTHETIC_LEVELS, 16)), {})
    page = search(served, vectors[0], Filters(safe=False, deduplicate=False), 0, 2_000, 400_000)
    assert len(page.rows) == 2_000 and index.nprobe == 1
    exact = np.argsort(-(vectors @ vectors[0]))[:2_000]
    assert len(set(page.rows.tolist()) & set(exact.tolist())) >= 0.9 * 2_000
    assert len(search(served, vectors[0], Filters(safe=False, deduplicate=False), 0, 10, 400_000).rows) == 10


def test_image_url_queries_fetch_only_when_allowed_and_only_http(service, materialized, tmp_path):
    """Off by default (test_bad_requests...); allowed, the server fetches the URL (here a
    loopback HTTP server holding a crawl image) and finds that picture first."""
    import dataclasses
    import functools
    import http.server
    import threading

    index = service.indices[INDEX]
    row = index.rows([0], ["shard", "tar_member"])[0]
    crawl = CrawlResource(root=str(materialized["crawl"]))
    (tmp_path / "query.jpg").write_bytes(dict(crawl.iter_tar(row["shard"], {row["tar_member"]}))[row["tar_member"]])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    allowed, service.settings = service.settings, dataclasses.replace(service.settings, fetch_image_urls=True)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/query.jpg"
        results, _ = knn(service, text=None, image_url=url, deduplicate=False)
        assert results[0]["similarity"] > 0.99
        with pytest.raises(ValueError, match="http"):
            knn(service, text=None, image_url=f"file://{tmp_path}/query.jpg")
    finally:
        service.settings = allowed
        server.shutdown()
