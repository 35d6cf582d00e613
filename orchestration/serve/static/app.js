// The search page: queries /api/search, shows a grid of results, the filters, explanations,
// and cuts subsets (a policy file, a parquet of url and caption, DataComp uids).
"use strict";

const PAGE = 40;
const state = { query: null, offset: 0, info: null };
const $ = (id) => document.getElementById(id);

async function call(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function filters() {
  const ranges = {};
  for (const column of state.info.range_columns) {
    const low = number(`min-${column}`), high = number(`max-${column}`);
    if (low !== null || high !== null) ranges[column] = [low, high];
  }
  const inPolicies = [], outPolicies = [];
  for (const policy of currentIndex().policies) {
    const choice = $(`member-${policy}`).value;
    if (choice === "in") inPolicies.push(policy);
    if (choice === "out") outPolicies.push(policy);
  }
  return {
    use_safety_model: $("safe").checked,
    deduplicate: $("deduplicate").checked,
    use_violence_detector: $("violence").checked,
    filters: { ranges, language: $("language").value.trim() || null,
               in_policies: inPolicies, out_policies: outPolicies },
  };
}

function currentIndex() {
  return state.info.indices.find((i) => i.name === $("index").value) || state.info.indices[0];
}

function request(extra) {
  return { indice_name: $("index").value, ...state.query, ...filters(), ...extra };
}

function describeRemoved(removed) {
  const parts = Object.entries(removed).filter(([, n]) => n > 0).map(([name, n]) => `${name} ${n}`);
  return parts.length ? `removed: ${parts.join(", ")}` : "nothing removed";
}

async function search(offset) {
  if (!state.query) return;
  state.offset = offset;
  setStatus("searching...");
  try {
    const answer = await (await call("/api/search", request({ offset, limit: PAGE }))).json();
    render(answer);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function render(answer) {
  const results = $("results");
  results.replaceChildren();
  for (const result of answer.results) results.append(card(result));
  const shown = answer.results.length;
  setStatus(`${answer.matched} of ${answer.searched} neighbours searched pass the filters` +
            `${answer.exhausted ? " (the whole index)" : ""}; ${describeRemoved(answer.removed)}.` +
            (shown === 0 ? " No result on this page." : ""));
  $("page-label").textContent = shown ? `results ${answer.offset + 1}-${answer.offset + shown}` : "";
  $("previous").disabled = answer.offset === 0;
  $("next").disabled = answer.matched <= answer.offset + shown && answer.exhausted;
}

function card(result) {
  const picture = state.info.images
    ? element("img", { src: `/api/image/${encodeURIComponent($("index").value)}/${result.id}`,
                       alt: result.caption, loading: "lazy" })
    : element("div", { class: "no-image" }, result.url || "no url");
  const scores = Object.entries(result.scores)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(3) : v}`).join(" · ");
  const members = Object.entries(result.policies).filter(([, kept]) => kept).map(([p]) => p).join(", ");
  return element("div", { class: "result", "data-key": result.key, "data-id": result.id,
                          "data-scores": JSON.stringify(result.scores) },
    picture,
    element("div", { class: "caption" }, result.caption),
    element("div", { class: "similarity" }, `similarity ${result.similarity.toFixed(4)}`),
    element("div", { class: "scores" }, scores),
    element("div", { class: "member" }, members ? `in: ${members}` : "in no subset"),
    element("div", { class: "actions" },
      element("button", { type: "button", class: "like", onclick: () => startSearch({ like: result.id },
        `images like result ${result.id}`) }, "similar"),
      element("button", { type: "button", class: "by-caption", onclick: () => {
        $("query").value = result.caption; startSearch({ text: result.caption }, null);
      } }, "this caption"),
      element("button", { type: "button", class: "explain", onclick: () => explain(result.key) }, "why")));
}

async function explain(key) {
  const body = $("explanation-body");
  body.replaceChildren(element("p", {}, "loading..."));
  $("explanation").hidden = false;
  try {
    const answer = await (await call("/api/explain", { key })).json();
    body.replaceChildren(element("p", {}, element("b", {}, answer.key), ` (shard ${answer.shard})`),
                         element("p", {}, answer.caption || ""));
    for (const [policy, decision] of Object.entries(answer.policies || {})) {
      const why = decision.kept ? "kept" : `dropped by ${(decision.dropped_by || []).join("; ")}`;
      body.append(element("p", { class: decision.kept ? "kept" : "dropped", "data-policy": policy },
                          element("b", {}, policy), `: ${why}`));
    }
    body.append(element("pre", {}, JSON.stringify(answer.scores || {}, null, 1)));
  } catch (error) {
    body.replaceChildren(element("p", { class: "error" }, error.message));
  }
}

function startSearch(query, note) {
  state.query = query;
  $("query-note").textContent = note || "";
  search(0);
}

async function countMatches() {
  if (!state.query) return;
  try {
    const answer = await (await call("/api/count", request({ threshold: number("count-threshold") }))).json();
    $("count-result").textContent = `${answer.exact ? "" : "at least "}${answer.count} index rows at or above ${answer.threshold}`;
  } catch (error) {
    $("count-result").textContent = error.message;
  }
}

async function savePolicy() {
  if (!state.query) return;
  try {
    const answer = await (await call("/api/policies", request({ name: $("policy-name").value.trim(),
                                                               limit: number("subset-limit") }))).json();
    $("subset-result").textContent = `saved ${answer.file} (${answer.members} members): ${answer.note}`;
  } catch (error) {
    $("subset-result").textContent = error.message;
  }
}

async function download(kind) {
  if (!state.query) return;
  try {
    const response = await call(`/api/export/${kind}`, request({ limit: number("subset-limit") }));
    const name = (response.headers.get("Content-Disposition") || "").split('filename="')[1]?.replace('"', "");
    const link = element("a", { href: URL.createObjectURL(await response.blob()), download: name || kind });
    link.click();
    $("subset-result").textContent = `downloaded ${name}`;
  } catch (error) {
    $("subset-result").textContent = error.message;
  }
}

function buildFilters() {
  const ranges = $("ranges").querySelector("tbody");
  ranges.replaceChildren();
  for (const column of state.info.range_columns) {
    ranges.append(element("tr", {}, element("td", {}, column),
      element("td", {}, element("input", { id: `min-${column}`, size: 4 })),
      element("td", {}, element("input", { id: `max-${column}`, size: 4 }))));
  }
  const memberships = $("memberships").querySelector("tbody");
  memberships.replaceChildren();
  for (const policy of currentIndex().policies) {
    const choice = element("select", { id: `member-${policy}` }, element("option", { value: "" }, "either"),
      element("option", { value: "in" }, "in"), element("option", { value: "out" }, "not in"));
    memberships.append(element("tr", {}, element("td", {}, policy), element("td", {}, choice)));
  }
}

async function start() {
  try {
    state.info = await (await call("/api/info")).json();
  } catch (error) {
    setStatus(`the service did not answer: ${error.message}`, true);
    return;
  }
  for (const index of state.info.indices) {
    $("index").append(element("option", { value: index.name }, `${index.name} (${index.count})`));
  }
  buildFilters();
  if (!state.info.indices.length) setStatus("no subset has an index yet: materialize one", true);
  $("index").addEventListener("change", () => { buildFilters(); search(0); });
  $("query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) startSearch({ text }, null);
  });
  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => startSearch({ image: reader.result.split(",")[1] }, `images like ${file.name}`);
    reader.readAsDataURL(file);
  });
  $("previous").addEventListener("click", () => search(Math.max(0, state.offset - PAGE)));
  $("next").addEventListener("click", () => search(state.offset + PAGE));
  $("count").addEventListener("click", countMatches);
  $("save-policy").addEventListener("click", savePolicy);
  $("download-parquet").addEventListener("click", () => download("parquet"));
  $("download-uids").addEventListener("click", () => download("uids"));
  $("close-explanation").addEventListener("click", () => { $("explanation").hidden = true; });
  for (const id of ["safe", "deduplicate", "violence"]) $(id).addEventListener("change", () => search(0));
}

start();
