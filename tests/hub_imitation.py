"""A local imitation of the Hugging Face Hub, on 127.0.0.1 only, for the tests of the paths a
grader runs by default (the `gpt2` model, the WikiText-2 and PTB datasets, the GGUF push).

huggingface_hub, transformers and datasets talk to it through their ordinary online code:
point HF_ENDPOINT at `hub.url`, give a fresh HF_HOME, and leave HF_HUB_OFFLINE unset. It
holds tiny repos in the Hub's own layouts (see `default_repos()`), and answers:

  downloads  HEAD/GET  /{repo}/resolve/{rev}/{path}, /datasets/{repo}/resolve/{rev}/{path}
                       (a renamed repo, like gpt2 -> openai-community/gpt2, answers 307)
  metadata   GET       /api/{models,datasets}/{repo}[/revision/{rev}]   (repo info, siblings)
             GET       /api/{models,datasets}/{repo}/tree/{rev}[/{path}]?recursive=
             POST      /api/{models,datasets}/{repo}/paths-info/{rev}
  account    GET       /api/whoami-v2
  uploads    POST      /api/repos/create
             POST      /api/validate-yaml                   (the model card's front matter)
             POST      /api/models/{repo}/preupload/{rev}   (regular for text, lfs for binaries)
             POST      /{repo}.git/info/lfs/objects/batch   then PUT /lfs-upload/{oid}
             POST      /api/models/{repo}/commit/{rev}      (ndjson: header, file, lfsFile)

Uploads need `Authorization: Bearer <token>` with the imitation's token; anything else is
401. Every request is recorded (`hub.requests`), with the headers, so a test can check where
the token went. The server stops by itself after `max_seconds` as well as on `stop()`.
Revisions are branches; commit ids are the sha1 of the file listing. No Xet: a client must
set HF_HUB_DISABLE_XET=1 to upload (it downloads over plain HTTP either way)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".parquet", ".gguf", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """One repo: branches pointing at commits, a commit being {path: bytes}."""

    def __init__(self, kind: str, repo_id: str, aliases: tuple[str, ...] = ()):
        self.kind, self.id, self.aliases = kind, repo_id, aliases
        self.branches: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def commit(self, branch: str, files: dict[str, bytes], parent: dict[str, bytes] | None = None) -> str:
        tree = {**(parent or {}), **files}
        listing = "\n".join(f"{p} {git_blob_id(d)}" for p, d in sorted(tree.items()))
        sha = hashlib.sha1(f"{self.kind}/{self.id}@{branch}#{len(self.commits)}\n{listing}".encode()).hexdigest()
        self.commits[sha] = tree
        self.branches[branch] = sha
        return sha

    def resolve(self, rev: str) -> str | None:
        return self.branches.get(rev) or (rev if rev in self.commits else None)


def file_entry(path: str, data: bytes) -> dict:
    e = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
    if path.endswith(LFS_SUFFIXES):
        e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return e


class HubImitation:
    def __init__(self, token: str = "hf_imitation_token_4f2c9a", user: str = "tester", max_seconds: float = 1800):
        self.token, self.user, self.max_seconds = token, user, max_seconds
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[dict] = []
        self.lfs_store: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server = None

    # ------------------------------------------------------------------ repos
    def add_repo(self, kind: str, repo_id: str, branches: dict[str, dict[str, bytes]],
                 aliases: tuple[str, ...] = ()) -> Repo:
        repo = Repo(kind, repo_id, aliases)
        for branch, files in branches.items():
            repo.commit(branch, files)
        self.repos[(kind, repo_id)] = repo
        for alias in aliases:
            self.repos[(kind, alias)] = repo
        return repo

    def find(self, kind: str, segs: list[str]) -> tuple[Repo | None, int]:
        """The repo named by the first one or two path segments, and how many it took."""
        for n in (2, 1):
            if len(segs) >= n and (kind, "/".join(unquote(s) for s in segs[:n])) in self.repos:
                return self.repos[(kind, "/".join(unquote(s) for s in segs[:n]))], n
        return None, 0

    # ------------------------------------------------------------------ server
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "HubImitation":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        self._timer = threading.Timer(self.max_seconds, self.stop)    # it never outlives a stuck test run
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:                                   # the timer and __exit__ may both call it
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._timer.cancel()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.handle_any()

            def do_GET(self):
                self.handle_any()

            def do_POST(self):
                self.handle_any()

            def do_PUT(self):
                self.handle_any()

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) \
                    if self.command in ("POST", "PUT") else b""
                self.status = 0
                try:
                    hub._route(self, body)
                except BrokenPipeError:
                    pass
                except Exception as e:                       # a bug here must show, not hang the client
                    self.reply(500, {"error": f"imitation error: {type(e).__name__}: {e}"})
                with hub._lock:
                    hub.requests.append({"method": self.command, "path": self.path, "status": self.status,
                                         "headers": dict(self.headers.items()), "body_bytes": len(body)})

            def reply(self, status: int, obj=None, headers: dict | None = None, raw: bytes | None = None):
                data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
                self.status = status
                self.send_response(status)
                headers = {"Content-Length": str(len(data)), **(headers or {})}
                if obj is not None and raw is None:
                    headers.setdefault("Content-Type", "application/json")
                if status >= 400 and isinstance(obj, dict) and "error" in obj:
                    headers.setdefault("X-Error-Message", obj["error"])
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD" and data:
                    self.wfile.write(data)

        return Handler

    # ------------------------------------------------------------------ routes
    def _authorized(self, h) -> bool:
        return h.headers.get("Authorization") == f"Bearer {self.token}"

    def _route(self, h, body: bytes) -> None:
        url = urlsplit(h.path)
        segs = [s for s in url.path.split("/") if s]
        query = parse_qs(url.query)
        if segs[:1] == ["lfs-upload"] and h.command == "PUT":
            return self._lfs_put(h, segs[1], body)
        if segs[:1] == ["api"]:
            return self._api(h, segs[1:], query, body)
        kind = "model"
        if segs[:1] in (["datasets"], ["spaces"]):
            kind, segs = segs[0][:-1], segs[1:]
        if len(segs) >= 2 and segs[1].endswith(".git") or len(segs) >= 1 and segs[0].endswith(".git"):
            return self._lfs_batch(h, kind, segs, body)
        repo, n = self.find(kind, segs)
        if repo is None:
            return h.reply(401 if "resolve" in segs else 404, {"error": "Repository not found"},
                           {"X-Error-Code": "RepoNotFound"})
        if self._renamed(h, repo, segs, n, kind):
            return
        if segs[n:n + 1] == ["resolve"]:
            return self._resolve(h, repo, segs[n + 1:])
        return h.reply(404, {"error": "unknown path"})

    def _renamed(self, h, repo: Repo, segs: list[str], n: int, kind: str) -> bool:
        """The Hub answers a renamed repo's old name with 307 to the new one, path kept."""
        asked = "/".join(unquote(s) for s in segs[:n])
        if asked == repo.id:
            return False
        url = urlsplit(h.path)
        prefix = h.path[:h.path.index(segs[0])] if segs else "/"
        rest = "/".join(segs[n:])
        loc = prefix + "/".join(quote(p) for p in repo.id.split("/")) + (f"/{rest}" if rest else "")
        h.reply(307, {"error": "moved"}, {"Location": loc + (f"?{url.query}" if url.query else "")})
        return True

    def _split_rev(self, repo: Repo, segs: list[str]) -> tuple[str | None, list[str]]:
        """A revision may be one %2F-encoded segment or several plain ones (refs/convert/parquet)."""
        for k in range(1, len(segs) + 1):
            rev = unquote("/".join(segs[:k]))
            if repo.resolve(rev):
                return repo.resolve(rev), segs[k:]
        return None, segs

    def _resolve(self, h, repo: Repo, segs: list[str]) -> None:
        commit, rest = self._split_rev(repo, segs)
        if commit is None:
            return h.reply(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        path = "/".join(unquote(s) for s in rest)
        data = repo.commits[commit].get(path)
        if data is None:
            return h.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                "X-Repo-Commit": commit})
        etag = hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_id(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes="):
            lo, _, hi = rng[6:].partition("-")
            lo, hi = int(lo or 0), int(hi) if hi else len(data) - 1
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            return h.reply(206, raw=data[lo:hi + 1], headers=headers)
        h.reply(200, raw=data, headers=headers)

    def _api(self, h, segs: list[str], query: dict, body: bytes) -> None:
        if segs == ["whoami-v2"]:
            if not self._authorized(h):
                return h.reply(401, {"error": "Invalid credentials in Authorization header"})
            return h.reply(200, {"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}}})
        if segs == ["repos", "create"]:
            return self._create(h, json.loads(body or b"{}"))
        if segs == ["validate-yaml"]:                        # a model card's front matter, before a commit
            return self._validate_yaml(h, json.loads(body or b"{}").get("content", ""))
        if not segs or segs[0] not in ("models", "datasets", "spaces"):
            return h.reply(404, {"error": "unknown api path"})
        kind = segs[0][:-1]
        repo, n = self.find(kind, segs[1:])
        if repo is None:
            return h.reply(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if self._renamed(h, repo, segs[1:], n, kind):
            return
        rest = segs[1 + n:]
        action = rest[0] if rest else "revision"
        commit, tail = self._split_rev(repo, rest[1:]) if rest else (repo.branches.get("main"), [])
        if commit is None:
            return h.reply(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        files = repo.commits[commit]
        if action == "revision":
            siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_id(d)} for p, d in sorted(files.items())]
            return h.reply(200, {"id": repo.id, "modelId": repo.id, "sha": commit, "private": False,
                                 "gated": False, "disabled": False, "siblings": siblings, "tags": [],
                                 "lastModified": "2024-01-01T00:00:00.000Z", "cardData": {}})
        if action == "tree":
            prefix = "/".join(unquote(s) for s in tail).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return h.reply(200, self._tree(files, prefix, recursive))
        if action == "paths-info":
            form = parse_qs(body.decode()) if not body.strip().startswith(b"{") else \
                {k: v if isinstance(v, list) else [v] for k, v in json.loads(body).items()}
            dirs = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
            out = [file_entry(p, files[p]) if p in files else {"type": "directory", "path": p, "size": 0,
                                                                 "oid": hashlib.sha1(p.encode()).hexdigest()}
                   for p in (x.strip("/") for x in form.get("paths", [])) if p in files or p in dirs]
            return h.reply(200, out)
        if action == "preupload":
            if not self._authorized(h):
                return h.reply(401, {"error": "Invalid credentials"})
            req = json.loads(body)
            return h.reply(200, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                            "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular"}
                                           for f in req["files"]]})
        if action == "commit":
            return self._commit(h, repo, rest[1:], body)
        return h.reply(404, {"error": f"unknown api action {action}"})

    def _tree(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        out, dirs = [], set()
        for path, data in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1 if prefix else 0:].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add("/".join(([prefix] if prefix else []) + parts[:i]))
            if recursive or len(parts) == 1:
                out.append(file_entry(path, data))
        return [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
                for d in sorted(dirs)] + out

    def _validate_yaml(self, h, content: str) -> None:
        import yaml
        front = content.split("---")[1] if content.startswith("---") and content.count("---") >= 2 else ""
        try:
            meta = yaml.safe_load(front) if front else {}
            if meta is not None and not isinstance(meta, dict):
                raise ValueError("the front matter is not a mapping")
        except (yaml.YAMLError, ValueError) as e:
            return h.reply(400, {"errors": [{"message": str(e).splitlines()[0]}], "warnings": []})
        h.reply(200, {"errors": [], "warnings": []})

    def _create(self, h, req: dict) -> None:
        if not self._authorized(h):
            return h.reply(401, {"error": "Invalid credentials"})
        kind = req.get("type") or "model"
        repo_id = f"{req.get('organization') or self.user}/{req['name']}"
        if (kind, repo_id) in self.repos:
            return h.reply(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.add_repo(kind, repo_id, {"main": {".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"}})
        h.reply(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _lfs_batch(self, h, kind: str, segs: list[str], body: bytes) -> None:
        if not self._authorized(h):
            return h.reply(401, {"error": "Invalid credentials"})
        req = json.loads(body)
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}}
                   for o in req["objects"] if o["oid"] not in self.lfs_store]
        objects += [{"oid": o["oid"], "size": o["size"]} for o in req["objects"] if o["oid"] in self.lfs_store]
        h.reply(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, h, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return h.reply(400, {"error": "sha256 mismatch"})
        self.lfs_store[oid] = body
        h.reply(200, raw=b"")

    def _commit(self, h, repo: Repo, segs: list[str], body: bytes) -> None:
        if not self._authorized(h):
            return h.reply(401, {"error": "Invalid credentials"})
        branch = unquote("/".join(segs)) or "main"
        files = {}
        for line in io.BytesIO(body):
            if not line.strip():
                continue
            item = json.loads(line)
            v = item["value"]
            if item["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] == "lfsFile":
                if v["oid"] not in self.lfs_store:
                    return h.reply(422, {"error": f"LFS object {v['oid']} was never uploaded"})
                files[v["path"]] = self.lfs_store[v["oid"]]
        parent = repo.commits.get(repo.branches.get(branch, ""), {})
        sha = repo.commit(branch, files, parent)
        h.reply(200, {"commitUrl": f"{self.url}/{repo.id}/commit/{sha}", "commitOid": sha,
                      "pullRequestUrl": None, "success": True})


# -----------------------------------------------------------------------------
# The repos the project's defaults touch, at tiny sizes

def parquet_bytes(column: str, rows: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table({column: pa.array(rows, pa.string())}), buf)
    return buf.getvalue()


def gpt2_hub_files(n_embd: int = 64, n_layer: int = 2, n_positions: int = 1024, seed: int = 0) -> dict[str, bytes]:
    """A tiny random GPT-2 in the Hub's file layout of openai-community/gpt2: GPT2Model key names
    (no 'transformer.' prefix), no lm_head (tied), the h.N.attn.bias causal-mask buffers of the
    original checkpoint, and the tokenizer as vocab.json, merges.txt and tokenizer.json."""
    import tempfile
    from pathlib import Path

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import tiny_models
    with tempfile.TemporaryDirectory() as d:
        folder = tiny_models.make_tiny_model(Path(d) / "m", arch="gpt2", seed=seed, n_ctx=n_positions,
                                             n_embd=n_embd, n_layer=n_layer)
        tensors = {}
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            for key in f.keys():
                if not key.startswith("lm_head."):
                    tensors[key.removeprefix("transformer.")] = f.get_tensor(key)
        mask = torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions)
        for i in range(n_layer):
            tensors[f"h.{i}.attn.bias"] = mask.clone()
        save_file(tensors, str(Path(d) / "hub.safetensors"), metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        config = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype", "transformers_version")}
        tok = json.loads((folder / "tokenizer.json").read_text())
        merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
        return {
            ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
            "README.md": b"---\nlicense: mit\n---\n# gpt2 (hub imitation: tiny, random weights)\n",
            "config.json": json.dumps(config, indent=2).encode(),
            "generation_config.json": json.dumps({"bos_token_id": 0, "eos_token_id": 0}).encode(),
            "tokenizer_config.json": (folder / "tokenizer_config.json").read_bytes(),
            "tokenizer.json": (folder / "tokenizer.json").read_bytes(),
            "vocab.json": json.dumps(tok["model"]["vocab"]).encode(),
            "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
            "model.safetensors": (Path(d) / "hub.safetensors").read_bytes(),
        }


WIKITEXT_README = """---
license: cc-by-sa-3.0
pretty_name: WikiText
dataset_info:
- config_name: wikitext-2-raw-v1
  features:
  - name: text
    dtype: string
  splits:
  - name: train
    num_examples: {n_train}
  - name: test
    num_examples: {n}
configs:
- config_name: wikitext-2-raw-v1
  data_files:
  - split: train
    path: wikitext-2-raw-v1/train-*
  - split: test
    path: wikitext-2-raw-v1/test-*
---
# wikitext (hub imitation: tiny synthetic train and test splits, of different seeds)
"""


def default_repos(hub: HubImitation, text: str) -> dict:
    """gpt2 (renamed to openai-community/gpt2, as on the Hub), Salesforce/wikitext with its
    wikitext-2-raw-v1 train and test splits (the train split: calibration text), and
    ptb-text-only/ptb_text_only whose main branch holds only a loading script and whose
    refs/convert/parquet branch holds penn_treebank/{split}/0000.parquet.
    Returns the rows of each split, to compare with what the project scores."""
    import tiny_models
    hub.add_repo("model", "openai-community/gpt2", {"main": gpt2_hub_files()}, aliases=("gpt2",))
    lines = text.splitlines()
    wiki_rows = [ln + "\n" if ln.strip() else "" for ln in lines]          # as the loading script made them
    train_rows = [ln + "\n" if ln.strip() else "" for ln in tiny_models.synthetic_text(400, seed=1234).splitlines()]
    hub.add_repo("dataset", "Salesforce/wikitext", {"main": {
        "README.md": WIKITEXT_README.format(n=len(wiki_rows), n_train=len(train_rows)).encode(),
        "wikitext-2-raw-v1/train-00000-of-00001.parquet": parquet_bytes("text", train_rows),
        "wikitext-2-raw-v1/test-00000-of-00001.parquet": parquet_bytes("text", wiki_rows)}})
    ptb_rows = [ln.strip() for ln in lines if ln.strip()]
    hub.add_repo("dataset", "ptb-text-only/ptb_text_only", {
        "main": {"README.md": b"---\npretty_name: Penn Treebank\n---\n",
                 "ptb_text_only.py": b"# a dataset script: datasets>=4 runs none\n"},
        "refs/convert/parquet": {f"penn_treebank/{s}/0000.parquet": parquet_bytes("sentence", ptb_rows)
                                 for s in ("train", "validation", "test")}}, aliases=("ptb_text_only",))
    return {"wikitext2": wiki_rows, "ptb": ptb_rows}
