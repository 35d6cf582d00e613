"""A Dagster webserver on loopback for one command, and the GraphQL calls `materialize` makes.

`clipsieve materialize` asks Dagster, not its own bookkeeping, what is stale and launches
runs the way the UI does: through the webserver's GraphQL API (Dagster's public interface
to a code location), so each run goes through the instance's run coordinator and run
launcher (a subprocess by default, a cluster task where dagster.yaml says so). The server
is started for the command on a free loopback port over the command's DAGSTER_HOME and
stopped after; it dies with the command (Linux) if that is killed.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
START_SECONDS = 300  # the code location imports torch and open_clip: seconds, more on a loaded machine

LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message }
                          ... on RepositoryLocation { repositories { name } } } } } } }"""
# The UI's stale badge of each asset node: by partition for per-shard assets.
STALE_BY_PARTITION = """
query Stale($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) { assetKey { path } staleStatusByPartition(partitions: $partitions) } }"""
STALE = """
query Stale($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path } staleStatus } }"""
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on Error { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


class DagsterServerError(RuntimeError):
    """The webserver did not start, or answered a call with an error."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the server's process before exec: SIGTERM it when the command ends, however."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the server is stopped by __exit__ only
        pass


class DagsterServer:
    """`dagster-webserver` over the instance at `home` and clipsieve's code location, built
    with the environment `env` (the settings' variables, see orchestration/definitions.py)."""

    def __init__(self, home: str, env: dict[str, str] | None = None, log=print):
        self.home, self.env, self.log = str(Path(home).resolve()), env or {}, log
        self.url = ""
        self.location = self.repository = ""
        self._process: subprocess.Popen | None = None
        self._log_file = None

    def __enter__(self) -> "DagsterServer":
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log_file = tempfile.NamedTemporaryFile("w+", prefix="clipsieve-webserver-", suffix=".log")
        command = [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                   "-w", str(WORKSPACE)]
        env = {**os.environ, **self.env, "DAGSTER_HOME": self.home}
        started = time.time()
        self._process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            self._wait_until_loaded(started)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.log(f"Dagster webserver on {self.url} (code location loaded in {time.time() - started:.1f} s)")
        return self

    def _wait_until_loaded(self, started: float) -> None:
        while time.time() - started < START_SECONDS:
            if self._process.poll() is not None:
                raise DagsterServerError(f"dagster-webserver exited ({self._process.returncode}):\n{self._log_tail()}")
            try:
                entries = self.query(LOCATIONS)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
                continue
            entry = entries[0]
            if entry["loadStatus"] == "LOADED":
                location = entry["locationOrLoadError"]
                if location["__typename"] == "PythonError":
                    raise DagsterServerError(f"the code location failed to load:\n{location['message']}")
                self.location, self.repository = entry["name"], location["repositories"][0]["name"]
                return
            time.sleep(0.5)
        raise DagsterServerError(f"dagster-webserver did not load the code location in {START_SECONDS} s:\n"
                                 f"{self._log_tail()}")

    def _log_tail(self, chars: int = 3000) -> str:
        self._log_file.flush()
        return Path(self._log_file.name).read_text()[-chars:]

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # the webserver stops its code server on the way out
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log_file is not None:
            self._log_file.close()

    def query(self, text: str, variables: dict | None = None) -> dict:
        """One GraphQL call; the `data` of its answer."""
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise DagsterServerError("; ".join(e.get("message", str(e)) for e in answer["errors"]))
        return answer["data"]

    def stale_by_partition(self, keys: list[list[str]], partitions: list[str]) -> dict[tuple[str, str], str]:
        """(asset key, partition) -> FRESH, STALE or MISSING, as the UI shows it."""
        nodes = self.query(STALE_BY_PARTITION, {"keys": [{"path": k} for k in keys],
                                                "partitions": partitions})["assetNodes"]
        return {("/".join(node["assetKey"]["path"]), partition): status
                for node in nodes for partition, status in zip(partitions, node["staleStatusByPartition"])}

    def stale(self, keys: list[list[str]]) -> dict[str, str]:
        """Asset key -> FRESH, STALE or MISSING for unpartitioned assets."""
        nodes = self.query(STALE, {"keys": [{"path": k} for k in keys]})["assetNodes"]
        return {"/".join(node["assetKey"]["path"]): node["staleStatus"] for node in nodes}

    def launch_run(self, job: str, keys: list[list[str]] | None, tags: dict[str, str]) -> str:
        """Launch `job` (only `keys` of it, with their checks, when given) as the UI's
        launchpad does; the run's id."""
        selector = {"repositoryLocationName": self.location, "repositoryName": self.repository, "jobName": job}
        if keys is not None:
            selector["assetSelection"] = [{"path": k} for k in keys]
        params = {"selector": selector, "runConfigData": {},
                  "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}
        result = self.query(LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            details = result.get("message") or "; ".join(e["message"] for e in result.get("errors", []))
            raise DagsterServerError(f"launching {job} failed ({result['__typename']}): {details}")
        return result["run"]["runId"]
