"""Judge stage: an LLM reads each query, its known positives and its mined candidates, and says which candidates
answer the query as well as a positive (false negatives), as RLHN does ("Hard Negatives or False Negatives",
Thakur et al. 2025) and RocketQA's denoising before it (Qu et al., NAACL 2021).

The model is any OpenAI-compatible chat endpoint (`[judge] base_url`, `model`); its key is read from the
environment variable that `api_key_env` names, at call time only, and is never part of a parameter, a cache entry,
a log line or the provenance. One call judges one query with up to `max_positives` positives and up to
`max_candidates` candidates. The stage runs after sampling (`on = "negatives"`, stage `judge`) or on the filtered
pool before sampling (`on = "pool"`, stage `judge-pool`); a false negative is dropped or relabelled as a positive
(`on_false_negative`), and every export format then lists it with the positives.

Verdicts live in a store per (model id, prompt version, answer settings), keyed by the exact texts of the call and
written atomically every `flush_calls` calls, like the teacher's pair store: a rerun, a deeper pool or a crash never
pays for a call twice. Calls run in `concurrency` threads over the standard library's HTTP client, each with a
timeout and retries with exponential backoff on 429, 5xx and dropped connections; 401/403/404 stop the run with
one line (exit 2). A malformed answer is asked again once with a stricter instruction and then recorded as
"no verdict" (`on_no_verdict`). Before any call the stage counts the calls the store lacks and their tokens
(`dry_run` prints that and stops); `max_calls` / `max_tokens` refuse a run that would exceed them, and stop a
running one cleanly (its verdicts kept) if retries or longer answers push it over.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negmine import schema, tables
from negmine.cache import file_lock
from negmine.config import judge_stage
from negmine.errors import ConfigError, NegmineError
from negmine.hashing import canonical_json, file_sha256
from negmine.progress import bar
from negmine.stage import Config, Context, Inputs, Params, Stage

VERSION = "1"
PROMPT_VERSION = "rlhn-1"  # bumped when the prompt's wording changes: old verdicts are then never reused
log = logging.getLogger("negmine.judge")

RELABELED_FILE, VERDICTS_FILE, RELABELED, VERDICTS = (schema.RELABELED_FILE, schema.VERDICTS_FILE, schema.RELABELED,
                                                      schema.VERDICTS)

SYSTEM = ("You are an expert relevance assessor checking training data for a search engine. You answer with one "
          "JSON object and nothing else.")
ANSWER_FORMAT = '{"false_negatives": [2, 5]}'


def prompt(query: str, positives: list[str], candidates: list[str]) -> str:
    """The RLHN-style user message: the query, its known relevant passages, and numbered candidates."""
    lines = ["A retriever ranked the candidate passages below high for the query, and they are labelled as not "
             "relevant. Some may be false negatives: passages that answer the query as well as the known relevant "
             "passages do. Judge each candidate on its own against the query and the relevant passages.", "",
             f"Query: {query}", "", "Known relevant passages:"]
    lines += [f"[P{i}] {p}" for i, p in enumerate(positives, 1)]
    lines += ["", "Candidate passages:"]
    lines += [f"[{i}] {c}" for i, c in enumerate(candidates, 1)]
    lines += ["", "Which candidates answer the query as well as a relevant passage? Answer with only a JSON object "
              f"listing their numbers, for example {ANSWER_FORMAT}, or {{\"false_negatives\": []}} if none does."]
    return "\n".join(lines)


def strict_prompt(n: int) -> str:
    """The follow-up after a malformed answer."""
    return ("Your answer could not be read. Reply with exactly one JSON object and no other text, of the form "
            f"{ANSWER_FORMAT}, listing only candidate numbers from 1 to {n} (an empty list if none).")


def parse_answer(text: str, n: int) -> list[int] | None:
    """The candidate numbers (1-based) an answer names, or None when it is malformed: no JSON object with a
    `false_negatives` list of distinct integers in 1..n (a fenced code block around it is accepted)."""
    text = re.sub(r"^\s*<think>.*?</think>", "", text, flags=re.S).strip()  # a reasoning model's preamble
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("false_negatives"), list):
        return None
    nums = obj["false_negatives"]
    if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= n for x in nums) or \
            len(set(nums)) != len(nums):
        return None
    return sorted(nums)


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token for English BPE vocabularies), used before any call."""
    return math.ceil(len(text) / 4) + 4


# ---------------------------------------------------------------------------------------------------------------
# the endpoint


class JudgeStopped(NegmineError):
    """The stage stopped before finishing (budget reached, endpoint unavailable); verdicts so far are kept."""


class DryRun(NegmineError):
    """`[judge] dry_run`: the estimate was made and no call. `estimate` holds the numbers; exit code 0."""

    exit_code = 0

    def __init__(self, estimate: dict[str, Any]) -> None:
        self.estimate = estimate
        super().__init__(describe_estimate(estimate))


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx, a timeout, a dropped connection."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


@dataclass
class Budget:
    """Calls (HTTP requests, retries included) and tokens spent in this run, against their limits (0 = none)."""

    max_calls: int
    max_tokens: int
    calls: int = 0
    tokens: int = 0
    stopped: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_call(self) -> None:
        with self.lock:
            if self.stopped:
                raise JudgeStopped(self.stopped)
            if self.max_calls and self.calls >= self.max_calls:
                self.stopped = (f"[judge] max_calls {self.max_calls} reached: {self.calls} calls made in this run, "
                                "their verdicts are kept; raise max_calls or run again to go on")
                raise JudgeStopped(self.stopped)
            self.calls += 1

    def spend(self, tokens: int) -> None:
        with self.lock:
            self.tokens += tokens
            if self.max_tokens and self.tokens > self.max_tokens and not self.stopped:
                self.stopped = (f"[judge] max_tokens {self.max_tokens} reached: {self.tokens} tokens spent in "
                                f"{self.calls} calls in this run, their verdicts are kept; raise max_tokens or run "
                                "again to go on")


class Client:
    """An OpenAI-compatible `/chat/completions` client over http.client (one connection a request, so threads
    share nothing but the budget)."""

    def __init__(self, base_url: str, model: str, api_key: str | None, *, timeout: float, retries: int,
                 backoff: float, temperature: float, max_answer_tokens: int, budget: Budget,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname or "", url.port
        self.path = (url.path or "") + "/chat/completions"
        self.endpoint = redact(base_url.rstrip("/")) + "/chat/completions"  # for messages: never a credential
        self.model, self._key = model, api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.temperature, self.max_answer_tokens = temperature, max_answer_tokens
        self.budget, self.sleep = budget, sleep
        self.counts: Counter = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _post(self, body: bytes) -> tuple[int, bytes, str | None]:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Retry-After")
        finally:
            conn.close()

    def chat(self, messages: list[dict[str, str]]) -> tuple[str, int]:
        """The answer's text and the tokens it cost (the server's usage, else an estimate); retries transient
        failures with exponential backoff and jitter, honouring Retry-After."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_answer_tokens}).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            self.budget.take_call()
            self._count("requests")
            try:
                status, data, retry_after = self._post(body)
                if status in (401, 403):
                    raise ConfigError(f"[judge] {self.endpoint} refused the request (HTTP {status}): the key is "
                                      "missing or not valid; put a valid key in the environment variable that "
                                      "[judge] api_key_env names")
                if status == 404:
                    raise ConfigError(f"[judge] {self.endpoint} answered HTTP 404 (model {self.model!r}): check "
                                      "[judge] base_url (it should end where /chat/completions is added, such as "
                                      ".../v1) and [judge] model")
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}", _seconds(retry_after))
                if status != 200:
                    raise ConfigError(f"[judge] {self.endpoint} answered HTTP {status}: "
                                      f"{data[:200].decode('utf-8', 'replace')!r}; check [judge] model and settings")
                return _content(data, sum(estimate_tokens(m["content"]) for m in messages))
            except ConfigError as exc:  # 401/403/404/4xx: no other thread starts a call after this one
                with self.budget.lock:
                    self.budget.stopped = self.budget.stopped or str(exc)
                raise
            except _Transient as exc:
                last, wait_s = str(exc), exc.retry_after
            except (TimeoutError, socket.timeout):
                last, wait_s = f"no answer within {self.timeout:g} s", None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                last, wait_s = f"connection failed ({type(exc).__name__}: {exc})", None
            self._count("retries")
            if attempt < self.retries:
                delay = wait_s if wait_s is not None else self.backoff * 2 ** attempt
                self.sleep(min(delay, 60.0) * (1.0 + 0.1 * random.random()))  # jitter: threads do not retry in step
        raise JudgeStopped(f"[judge] {self.endpoint} failed {self.retries + 1} times in a row (last: {last}); the "
                           "verdicts so far are kept: run again when it answers, or raise [judge] retries / timeout")


def redact(url: str) -> str:
    """A URL fit for a message: no user:password@ and no query string (either may carry a credential)."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}"


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _content(data: bytes, prompt_estimate: int) -> tuple[str, int]:
    """(answer text, tokens) of a chat completion; a body that is not one gives "" (a malformed answer)."""
    try:
        obj = json.loads(data)
        text = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "", prompt_estimate
    usage = obj.get("usage") if isinstance(obj, dict) else None
    tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int):
        tokens = prompt_estimate + estimate_tokens(text if isinstance(text, str) else "")
    return (text if isinstance(text, str) else ""), tokens


# ---------------------------------------------------------------------------------------------------------------
# the verdict store


def store_dir(cache_root: Path, params: Mapping[str, Any]) -> Path:
    """One store per model id, prompt version and answer settings; entries inside are keyed by the call's texts."""
    ident = {k: params[k] for k in ("model", "prompt_version", "temperature", "max_answer_tokens")}
    return cache_root / "judge-verdicts" / hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:32]


def call_key(query: str, positives: list[str], candidates: list[str]) -> str:
    return hashlib.sha256(canonical_json([query, positives, candidates]).encode("utf-8")).hexdigest()


def load_store(folder: Path) -> dict[str, dict[str, Any]]:
    """Every verified part's verdicts by call key. A part is named by the SHA-256 of its bytes; a damaged one is
    reported and deleted (its calls are made again)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.glob("part-*.jsonl")):
        if file_sha256(p) != p.stem[len("part-"):]:
            log.warning("verdict store part %s is damaged (its content does not match its name); its calls are "
                        "made again", p)
            p.unlink(missing_ok=True)
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            out[rec["key"]] = rec
    return out


def write_part(folder: Path, records: list[dict[str, Any]]) -> Path:
    """Write verdicts atomically under the SHA-256 of their bytes."""
    data = "".join(canonical_json(r) + "\n" for r in records).encode("utf-8")
    name = folder / f"part-{hashlib.sha256(data).hexdigest()}.jsonl"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-part-", suffix=".jsonl", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return name


def compact(folder: Path, keep: int = 64) -> None:
    """Merge the parts into one when there are more than `keep` (flush_calls = 1 writes one a call)."""
    parts = sorted(folder.glob("part-*.jsonl"))
    if len(parts) <= keep:
        return
    records = list(load_store(folder).values())
    merged = write_part(folder, sorted(records, key=lambda r: r["key"]))
    for p in parts:  # the merged part is complete before any old one goes
        if p != merged:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# planning and judging


@dataclass
class Call:
    """One request: a query, its positives, a slice of its candidates (rows into the stage's candidate table)."""

    qid: str
    rows: list[int]
    messages: list[dict[str, str]]
    key: str
    tokens: int  # estimated prompt tokens plus the answer's cap


def plan(params: Mapping[str, Any], texts: tables.Texts, positives: dict[str, tuple[list[str], list[int]]],
         qids: list[str], didx: np.ndarray) -> list[Call]:
    """The calls for candidate rows grouped by query (pool: rank order; negatives: the sampler's), `max_candidates`
    a call."""
    cut = params["max_chars"]
    n, m = params["max_candidates"], params["max_positives"]
    calls: list[Call] = []
    starts = [0] + [i for i in range(1, len(qids)) if qids[i] != qids[i - 1]] + [len(qids)]
    # texts of the rows in use, read in one batch
    rows_needed = sorted({int(i) for i in didx} | {i for q in set(qids) for i in positives.get(q, ([], []))[1][:m]})
    found = dict(zip(rows_needed, texts.docs(rows_needed))) if rows_needed else {}
    for a, b in zip(starts[:-1], starts[1:]):
        if a == b:
            continue
        qid = qids[a]
        query = texts.queries[qid][:cut]
        pos = [found[i][:cut] for i in positives.get(qid, ([], []))[1][:m]]
        for c in range(a, b, n):
            rows = list(range(c, min(c + n, b)))
            cands = [found[int(didx[r])][:cut] for r in rows]
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt(query, pos, cands)}]
            tokens = sum(estimate_tokens(x["content"]) for x in msgs) + params["max_answer_tokens"]
            calls.append(Call(qid, rows, msgs, call_key(query, pos, cands), tokens))
    return calls


def describe_estimate(e: dict[str, Any]) -> str:
    return (f"judge estimate: {e['candidates']} candidates of {e['queries']} queries in {e['calls']} calls, "
            f"{e['cached_calls']} already in the verdict store; {e['new_calls']} calls to make, about "
            f"{e['new_tokens']} tokens (prompts estimated at 4 characters a token, answers at their cap of "
            f"{e['max_answer_tokens']}); model {e['model']} at {e['endpoint']}")


def _judge_one(client: Client, call: Call) -> dict[str, Any]:
    """Ask once, and once more with a stricter instruction if the answer is malformed."""
    n = len(call.rows)
    text, tokens = client.chat(call.messages)
    client.budget.spend(tokens)
    picks = parse_answer(text, n)
    retried = False
    if picks is None:
        retried = True
        more = call.messages + [{"role": "assistant", "content": text}, {"role": "user", "content": strict_prompt(n)}]
        text, extra = client.chat(more)
        client.budget.spend(extra)
        tokens += extra
        picks = parse_answer(text, n)
    return {"key": call.key, "false_negatives": picks, "verdict": "ok" if picks is not None else "no_verdict",
            "tokens": tokens, "retried": retried}


def run_calls(params: Mapping[str, Any], calls: list[Call], store: Path, api_key: str | None,
              sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Make the calls the store lacks (the caller holds the store's lock) and return every call's verdict."""
    have = load_store(store)
    todo = [c for c in {c.key: c for c in calls}.values() if c.key not in have]
    budget = Budget(params["max_calls"], params["max_tokens"])
    client = Client(params["base_url"], params["model"], api_key, timeout=params["timeout"],
                    retries=params["retries"], backoff=params["retry_backoff"], temperature=params["temperature"],
                    max_answer_tokens=params["max_answer_tokens"], budget=budget, sleep=sleep)
    pending: list[dict[str, Any]] = []
    failure: BaseException | None = None
    flush = params["flush_calls"]

    def save() -> None:
        if pending:
            write_part(store, pending)
            pending.clear()

    with bar(total=len(todo), desc="judge calls", unit="call") as progress, \
            ThreadPoolExecutor(max_workers=params["concurrency"], thread_name_prefix="negmine-judge") as pool:
        queue: Iterator[Call] = iter(todo)
        running: set[Future] = set()

        def submit() -> None:  # at most twice the threads in flight: a stop leaves little unstarted work behind
            while failure is None and not budget.stopped and len(running) < 2 * params["concurrency"]:
                nxt = next(queue, None)
                if nxt is None:
                    return
                running.add(pool.submit(_judge_one, client, nxt))

        try:
            submit()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.discard(fut)
                    try:
                        rec = fut.result()
                    except BaseException as exc:  # the first failure stops new calls; finished ones are kept
                        if failure is None or (isinstance(failure, JudgeStopped) and
                                               not isinstance(exc, JudgeStopped)):
                            failure = exc
                        continue
                    have[rec["key"]] = rec
                    pending.append(rec)
                    progress.update(1)
                    if len(pending) >= flush:
                        save()
                submit()
        except BaseException:  # Ctrl-C, SIGTERM: no queued call starts; the ones in flight finish or time out
            with budget.lock:
                budget.stopped = budget.stopped or "interrupted"
            for fut in running:
                fut.cancel()
            raise
        finally:
            save()  # whatever happened, finished verdicts are written: a rerun does not pay for them again
    if failure is not None:
        raise failure
    if budget.stopped:
        raise JudgeStopped(budget.stopped)
    compact(store)
    stats = {"calls_made": len(todo), "requests": client.counts["requests"], "retries": client.counts["retries"],
             "tokens_spent": budget.tokens}
    return have, stats


def judge_table(params: Mapping[str, Any], ingest_dir: Path, cand: pa.Table, store: Path
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Verdicts for the rows of `cand` (query_id, doc_idx, grouped by query; calls follow the table's order):
    0 negative, 1 false negative, 2 no verdict; and the stage's counts. Dry run: raises `DryRun` before any call."""
    qids = cand["query_id"].to_pylist()
    didx = cand["doc_idx"].to_numpy()
    with tables.Texts(ingest_dir) as texts:
        calls = plan(params, texts, tables.positives_by_query(ingest_dir), qids, didx)
    store.mkdir(parents=True, exist_ok=True)
    with file_lock(store / ".lock"):  # one writer a store: two runs never pay for one call twice
        for leftover in store.glob(".tmp-part-*"):  # a killed writer's; we hold the lock
            leftover.unlink(missing_ok=True)
        have = load_store(store)
        unique = {c.key: c for c in calls}
        new = [c for c in unique.values() if c.key not in have]
        estimate = {"queries": len(set(qids)), "candidates": len(qids), "calls": len(calls),
                    "distinct_calls": len(unique), "cached_calls": len(unique) - len(new), "new_calls": len(new),
                    "new_tokens": sum(c.tokens for c in new), "max_answer_tokens": params["max_answer_tokens"],
                    "model": params["model"], "endpoint": redact(params["base_url"])}
        log.info(describe_estimate(estimate))
        if params["dry_run"]:
            raise DryRun(estimate)
        if params["max_calls"] and len(new) > params["max_calls"]:
            raise JudgeStopped(f"[judge] {len(new)} calls are needed (the verdict store has {len(have)}), more than "
                               f"max_calls {params['max_calls']}; no call was made: raise max_calls, or judge fewer "
                               "candidates (max_candidates, the [sample] window)")
        if params["max_tokens"] and estimate["new_tokens"] > params["max_tokens"]:
            raise JudgeStopped(f"[judge] about {estimate['new_tokens']} tokens are needed for {len(new)} calls, more "
                               f"than max_tokens {params['max_tokens']}; no call was made: raise max_tokens, or "
                               "shorten the prompts (max_chars, max_positives)")
        if new:
            env = params["api_key_env"]
            key = os.environ.get(env) if env else None
            if env and not key:
                raise ConfigError(f"[judge] api_key_env names {env}, which is not set in the environment; export "
                                  f"{env}=<your key> (the key is never written to a config or the cache)")
            have, call_stats = run_calls(params, calls, store, key)
        else:
            call_stats = {"calls_made": 0, "requests": 0, "retries": 0, "tokens_spent": 0}
    verdict = np.zeros(len(qids), dtype=np.int8)
    counts: Counter = Counter()
    for c in calls:
        rec = have[c.key]
        counts["retried_malformed"] += bool(rec.get("retried"))
        if rec["false_negatives"] is None:
            verdict[c.rows] = 2
            counts["no_verdict_calls"] += 1
            continue
        for k in rec["false_negatives"]:
            verdict[c.rows[k - 1]] = 1
    tokens = sum(int(have[k].get("tokens", 0)) for k in unique)
    stats = {"model": params["model"], "prompt_version": params["prompt_version"], "on": params["on"],
             "judged": len(qids), "false_negatives": int((verdict == 1).sum()),
             "estimated_tokens": sum(c.tokens for c in unique.values()),
             "no_verdict": int((verdict == 2).sum()), "calls": len(calls), "from_store": estimate["cached_calls"],
             "tokens_of_all_calls": tokens, **call_stats,
             "malformed_answers_retried": int(counts["retried_malformed"]),
             "no_verdict_calls": int(counts["no_verdict_calls"])}
    return verdict, stats


def _removed(verdict: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Rows leaving the negatives: false negatives, and no-verdict rows when `on_no_verdict = "drop"`."""
    out = verdict == 1
    if params["on_no_verdict"] == "drop":
        out |= verdict == 2
    return out


def _write_outputs(params: Mapping[str, Any], cand: pa.Table, verdict: np.ndarray, out_dir: Path,
                   stats: dict[str, Any]) -> None:
    """The verdicts table and the relabelled positives (empty unless relabelling)."""
    names = np.array(["negative", "false_negative", "no_verdict"])
    pq.write_table(pa.table({"query_id": cand["query_id"], "doc_id": cand["doc_id"], "rank": cand["rank"],
                             "verdict": pa.array(names[verdict].tolist(), pa.string())}, schema=VERDICTS),
                   out_dir / VERDICTS_FILE)
    fn = np.flatnonzero(verdict == 1)
    relabel = params["on_false_negative"] == "relabel"
    rows = cand.take(pa.array(fn if relabel else np.array([], dtype=np.int64), pa.int64()))
    pq.write_table(pa.table({n: rows[n] for n in RELABELED.names}, schema=RELABELED), out_dir / RELABELED_FILE)
    removed = _removed(verdict, params)
    stats.update({"relabeled": int(len(fn)) if relabel else 0, "dropped": int(removed.sum()) - (len(fn) if relabel
                                                                                                 else 0),
                  "kept": int((~removed).sum())})


def judge_negatives(params: Mapping[str, Any], ingest_dir: Path, negatives_path: Path, store: Path,
                    out_dir: Path) -> dict[str, Any]:
    """After sampling: judge every sampled negative that was retrieved (pad-random fillers are random documents,
    not candidates), and write the negatives less the removed ones."""
    neg = pq.read_table(negatives_path)
    retrieved = np.flatnonzero(pc.equal(neg["source"], "sample").to_numpy(zero_copy_only=False))
    cand = neg.take(pa.array(retrieved, pa.int64()))
    verdict, stats = judge_table(params, ingest_dir, cand, store)
    full = np.zeros(neg.num_rows, dtype=np.int8)
    full[retrieved] = verdict
    keep = ~_removed(full, params)
    pq.write_table(neg.filter(pa.array(keep)), out_dir / schema.NEGATIVES_FILE)
    _write_outputs(params, cand, verdict, out_dir, stats)
    return stats


def judge_pool(params: Mapping[str, Any], ingest_dir: Path, kept_path: Path, store: Path,
               out_dir: Path) -> dict[str, Any]:
    """On the filtered pool: judge the kept candidates inside the [sample] rank window (the ones sampling may
    choose) and write the pool less the removed ones, in the same row groups (later stages stream them)."""
    pf = pq.ParquetFile(kept_path)
    lo, hi = params["rank_min"], params["rank_max"] or params["top_k"]
    pool = pf.read()
    ranks = pool["rank"].to_numpy()
    inside = np.flatnonzero((ranks >= lo) & (ranks <= hi))
    cand = pool.take(pa.array(inside, pa.int64()))
    verdict, stats = judge_table(params, ingest_dir, cand, store)
    full = np.zeros(pool.num_rows, dtype=np.int8)
    full[inside] = verdict
    keep = ~_removed(full, params)
    offset = 0
    with pq.ParquetWriter(out_dir / schema.KEPT_FILE, pf.schema_arrow) as writer:
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            writer.write_table(pool.slice(offset, n).filter(pa.array(keep[offset:offset + n])))
            offset += n
    _write_outputs(params, cand, verdict, out_dir, stats)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# the stage

KEYED = ("model", "max_candidates", "max_positives", "max_chars", "temperature", "max_answer_tokens",
         "on_false_negative", "on_no_verdict", "on")
UNKEYED = {"base_url": "where the model is served; verdicts are keyed by its model id",
           "api_key_env": "the name of the variable holding the key (the key itself is read at call time only)",
           "store": "the verdict store shared by runs of this model and prompt (keyed by both)",
           "concurrency": "speed only", "timeout": "how long to wait, not what is judged",
           "retries": "how hard to try, not what is judged", "retry_backoff": "speed only",
           "flush_calls": "how much a killed run loses, not the verdicts",
           "max_calls": "a limit: the stage finishes with every verdict or stops without an entry",
           "max_tokens": "a limit: the stage finishes with every verdict or stops without an entry"}


def _params(cfg: Config, ctx: Context) -> dict[str, Any]:
    j = cfg["judge"]
    p: dict[str, Any] = {k: j[k] for k in KEYED}
    p.update({k: j[k] for k in UNKEYED if k in j})
    p["prompt_version"] = PROMPT_VERSION
    # dry_run is keyed so that a dry run never finds a finished entry: it always reaches its estimate, and it
    # never writes an entry (it stops before)
    p["dry_run"] = j["dry_run"]
    p["store"] = str(store_dir(ctx.cache_root, p))
    if j["on"] == "pool":  # the window sampling chooses from: only those candidates are judged
        s = cfg["sample"]
        p.update(rank_min=s["rank_min"], rank_max=s["rank_max"], top_k=cfg["retrieve"]["top_k"])
    env = j["api_key_env"]
    if env and not j["dry_run"] and not os.environ.get(env):  # before any stage runs
        raise ConfigError(f"[judge] api_key_env names {env}, which is not set in the environment; export "
                          f"{env}=<your key> (the key is never written to a config or the cache)")
    return p


def _run_negatives(inputs: Inputs, params: Params, out: Path) -> dict[str, Any]:
    return judge_negatives(params, inputs["ingest"], inputs["sample"] / schema.NEGATIVES_FILE,
                           Path(params["store"]), out)


def _run_pool(inputs: Inputs, params: Params, out: Path) -> dict[str, Any]:
    return judge_pool(params, inputs["ingest"], inputs["exclude"] / schema.KEPT_FILE, Path(params["store"]), out)


STAGE = Stage(name="judge", version=VERSION, command="sample", section="judge", params=_params,
              reads=lambda cfg: ("ingest", "sample"), run=_run_negatives,
              outputs=(schema.NEGATIVES_FILE, RELABELED_FILE, VERDICTS_FILE),
              enabled=lambda cfg: judge_stage(cfg) == "judge", unkeyed=UNKEYED)
POOL_STAGE = Stage(name="judge-pool", version=VERSION, command="sample", section="judge", params=_params,
                   reads=lambda cfg: ("ingest", "exclude"), run=_run_pool,
                   outputs=(schema.KEPT_FILE, RELABELED_FILE, VERDICTS_FILE),
                   enabled=lambda cfg: judge_stage(cfg) == "judge-pool", unkeyed=UNKEYED)

