"""A Hugging Face Hub test double: the part of the Hub API that huggingface_hub 2.x uses to create a
repo, commit files inline (no LFS/xet), and download them, served from memory on 127.0.0.1.

Commits are kept, so branches and ``@<commit>`` revisions resolve like on the Hub. ``fail_commits``
makes commits answer 500 (a publish failing mid-way); ``token`` makes writes (and reads of private
repos) require ``Authorization: Bearer <token>``. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)


class HubServer:
    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization header
        self.fail_commits = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- state ------------------------------------------------------------------------------------
    def create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        # like the Hub: a new repo has one commit holding .gitattributes
        self.commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                    [], "initial commit")
        self.repos[repo_id] = repo
        return repo

    def commit(self, repo: Repo, branch: str, added: dict[str, bytes], deleted: list[str], message: str) -> Commit:
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        files.update(added)
        for path in deleted:
            files.pop(path, None)
        blob = json.dumps([parent, message, len(repo.commits),
                           sorted((p, hashlib.sha256(c).hexdigest()) for p, c in files.items())])
        oid = hashlib.sha1(blob.encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, files, message)
        repo.branches[branch] = oid
        return repo.commits[oid]


def _blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # git's blob id


def _handler(hub: HubServer):
    api_repo = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree|commits|refs|preupload|commit|branch)"
                          r"(?:/([^/]+))?(?:/(.*))?)?$")
    resolve = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        # -- plumbing ---------------------------------------------------------------------------
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, *, head: bool = False):
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, b"" if head else json.dumps({"error": message}).encode(), headers, head=head)

        def _authorized(self) -> bool:
            return hub.token is None or self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _record(self):
            with hub._lock:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))

        def _repo(self, repo_id: str, *, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404 if not head else 404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
                return None
            return repo

        # -- verbs ------------------------------------------------------------------------------
        def do_HEAD(self):
            self._record()
            self._resolve(head=True)

        def do_GET(self):
            self._record()
            path = urlsplit(self.path).path
            m = api_repo.match(path)
            if m is None:
                return self._resolve(head=False)
            repo_id, what, rev, rest = m.group(1), m.group(2), unquote(m.group(3) or "main"), m.group(4)
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = repo.resolve(rev)
            if what == "refs":
                return self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o}
                                                     for b, o in repo.branches.items()], "converts": [], "tags": []})
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if what in (None, "revision"):
                return self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                                        "siblings": [{"rfilename": p} for p in sorted(commit.files)]})
            if what == "tree":
                prefix = unquote(rest or "").strip("/")
                entries = [{"type": "file", "path": p, "size": len(c), "oid": _blob_oid(c)}
                           for p, c in sorted(commit.files.items()) if not prefix or p.startswith(prefix + "/")]
                return self._json(200, entries)
            if what == "commits":
                out, oid = [], commit.oid
                while oid:
                    c = repo.commits[oid]
                    out.append({"id": c.oid, "title": c.message, "message": c.message, "authors": [{"user": "test"}],
                                "date": "2025-01-01T00:00:00.000Z"})
                    oid = c.parent
                return self._json(200, out)
            self._error(404, None, f"unknown endpoint {path}")

        def _resolve(self, *, head: bool):
            path = urlsplit(self.path).path
            m = resolve.match(path)
            if m is None:
                return self._error(404, None, f"unknown endpoint {path}", head=head)
            repo = self._repo(m.group(1), head=head)
            if repo is None:
                return
            rev, filename = unquote(m.group(2)), unquote(m.group(3))
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
            content = commit.files.get(filename)
            if content is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist", head=head)
            self._send(200, content, {"X-Repo-Commit": commit.oid, "ETag": f'"{_blob_oid(content)}"',
                                      "Content-Type": "application/octet-stream"}, head=head)

        def do_POST(self):
            self._record()
            parts = urlsplit(self.path)
            body = self._body()
            if parts.path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            if parts.path == "/api/repos/create":
                req = json.loads(body or b"{}")
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                url = {"url": f"{hub.url}/{repo_id}", "name": repo_id}
                with hub._lock:
                    if repo_id in hub.repos:
                        return self._json(409, {**url, "error": "You already created this model repo"})
                    # huggingface_hub 2.x sends "visibility"; older clients sent "private"
                    hub.create(repo_id, req.get("visibility") == "private" or bool(req.get("private")))
                return self._json(200, url)
            m = api_repo.match(parts.path)
            if m is None:
                return self._error(404, None, f"unknown endpoint {parts.path}")
            repo_id, what, rev = m.group(1), m.group(2), unquote(m.group(3) or "main")
            repo = self._repo(repo_id)
            if repo is None:
                return
            if what == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files]})
            if what == "branch":
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                with hub._lock:
                    if rev in repo.branches:
                        return self._error(409, None, f"branch {rev} already exists")
                    base = repo.resolve(start)
                    if base is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {start}")
                    repo.branches[rev] = base.oid
                return self._json(200, {})
            if what == "commit":
                return self._commit(repo, rev, body, parse_qs(parts.query))
            self._error(404, None, f"unknown endpoint {parts.path}")

        def _commit(self, repo: Repo, branch: str, body: bytes, query: dict):
            if hub.fail_commits:
                return self._error(500, None, "Internal Error - We're working hard to fix this as soon as possible!")
            if branch not in repo.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            added, deleted, header = {}, [], {}
            for line in filter(None, body.split(b"\n")):
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    deleted.append(value["path"])
                else:  # lfsFile etc.: this double only takes inline content
                    return self._error(400, None, f"unsupported commit operation {key}")
            with hub._lock:
                parent = header.get("parentCommit")
                if parent and parent != repo.branches[branch]:
                    return self._error(412, None, "parent commit is not the head of the branch")
                commit = hub.commit(repo, branch, added, deleted, header.get("summary", ""))
            self._json(200, {"commitOid": commit.oid, "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{commit.oid}",
                             "pullRequestUrl": None})

    return Handler
