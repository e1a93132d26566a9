"""The [judge] stage against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/judge_server.py): scripted
verdicts, malformed answers, slow answers, 429/500, dropped connections, 401/404, budgets, dry runs, the verdict
store, and the key never written anywhere."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import negmine
from negmine.cli import app
from negmine.errors import ConfigError, NegmineError
from negmine.judge import JudgeStopped, parse_answer
from judge_server import Reply, ScriptedServer, verdict

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sample-bm25.toml"
runner = CliRunner()


def is_false_negative(text: str) -> bool:
    """The scripted judge's rule: a fixed quarter of the texts, by a hash of their start (prompts cut long texts at
    [judge] max_chars, exports do not)."""
    return hashlib.sha256(text[:100].encode()).digest()[0] % 4 == 0


def rule(req) -> Reply:
    return verdict([i for i, c in enumerate(req.candidates, 1) if is_false_negative(c)])


def judge_overrides(tmp_path: Path, server: ScriptedServer, *extra: str) -> list[str]:
    return [f"judge.model='test-model'", f"judge.base_url='{server.base_url}'", f"export.dir='{tmp_path / 'out'}'",
            f"run.cache_dir='{tmp_path / 'cache'}'", "judge.retry_backoff=0.01", "sample.num_negatives=3",
            "export.formats=['triplet','n-tuple','flagembedding','ids']", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_false_negatives_are_dropped_and_a_rerun_makes_no_call(tmp_path):
    with ScriptedServer(rule) as server:
        ov = judge_overrides(tmp_path, server)
        r = negmine.mine(CONFIG, ov)
        made = server.calls
        assert made == r.stages["judge"].stats["calls"] == 60  # one call a query: 3 candidates fit in one
        stats = r.stages["judge"].stats
        assert stats["false_negatives"] > 0 and stats["dropped"] == stats["false_negatives"]
        ids = read_jsonl(tmp_path / "out" / "ids.jsonl")
        texts = {q["query_id"]: q for q in ids}
        sampled = pq.read_table(r.stages["sample"].path / "negatives.parquet").num_rows
        assert sum(len(q["negative_ids"]) for q in ids) == sampled - stats["false_negatives"]
        for row in read_jsonl(tmp_path / "out" / "triplet.jsonl"):
            assert not is_false_negative(row["negative"])
        assert texts  # every query is still exported
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["judge"]["dropped"] == stats["false_negatives"]
        # the same config again: cached; --force recomputes the stage but the verdict store answers every call
        negmine.mine(CONFIG, ov)
        negmine.mine(CONFIG, ov, force=True)
        assert server.calls == made


def test_relabelled_candidates_become_positives_in_every_format(tmp_path):
    with ScriptedServer(rule) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.on_false_negative='relabel'"))
    relabeled = pq.read_table(r.stages["judge"].path / "relabeled.parquet").to_pylist()
    assert relabeled and len(relabeled) == r.stages["judge"].stats["relabeled"]
    out = tmp_path / "out"
    ids = {q["query_id"]: q for q in read_jsonl(out / "ids.jsonl")}
    for rel in relabeled:
        q = ids[rel["query_id"]]
        assert rel["doc_id"] in q["positive_ids"] and rel["doc_id"] not in q["negative_ids"]
    flag = read_jsonl(out / "flagembedding.jsonl")
    triplet = read_jsonl(out / "triplet.jsonl")
    positive_texts = {t for rec in flag for t in rec["pos"]}
    relabeled_texts = {t for rec in flag for t in rec["pos"] if is_false_negative(t)}
    assert relabeled_texts and relabeled_texts <= {row["positive"] for row in triplet}
    assert not any(is_false_negative(t) for rec in flag for t in rec["neg"])
    assert relabeled_texts <= positive_texts
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["relabeled"] == len(relabeled) == report["export"]["relabeled_positives"]
    assert "LLM judge" in (out / "report.md").read_text()


def test_judge_on_the_pool_removes_false_negatives_before_sampling(tmp_path):
    with ScriptedServer(rule) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.on='pool'", "judge.max_candidates=10"))
    stats = r.stages["judge-pool"].stats
    assert stats["judged"] > 300 and stats["false_negatives"] > 0  # every candidate inside ranks 1..30
    neg = pq.read_table(r.stages["sample"].path / "negatives.parquet")
    assert neg.num_rows == 180  # 3 a query: the pool is deep enough to fill them without the false negatives
    verdicts = pq.read_table(r.stages["judge-pool"].path / "verdicts.parquet")
    fn = {(q, d) for q, d, v in zip(*(verdicts[c].to_pylist() for c in ("query_id", "doc_id", "verdict")))
          if v == "false_negative"}
    assert len(fn) == stats["false_negatives"]
    assert not fn & set(zip(neg["query_id"].to_pylist(), neg["doc_id"].to_pylist()))
    assert max(verdicts["rank"].to_pylist()) <= 30  # only the [sample] window is judged


def test_malformed_answer_is_asked_again_once_with_a_stricter_instruction(tmp_path):
    def script(req):
        if not req.follow_up:
            return Reply("The second one, I think.")
        return rule(req)

    with ScriptedServer(script) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server))
        assert server.calls == 120
        assert all("could not be read" in req.body["messages"][-1]["content"]
                   for req in server.requests if req.follow_up)
    stats = r.stages["judge"].stats
    assert stats["malformed_answers_retried"] == 60 and stats["no_verdict"] == 0 and stats["false_negatives"] > 0


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_twice_malformed_answers_are_no_verdict_handled_as_configured(tmp_path, policy):
    def script(req):
        if req.query.startswith(("a", "t", "w")):  # some queries get a garbled answer every time
            return Reply("```json\n{\"false_negatives\": [99]}\n```" if req.follow_up else "no idea")
        return rule(req)

    with ScriptedServer(script) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server, f"judge.on_no_verdict='{policy}'"))
    stats = r.stages["judge"].stats
    assert stats["no_verdict"] > 0 and stats["no_verdict_calls"] > 0
    sampled = pq.read_table(r.stages["sample"].path / "negatives.parquet").num_rows
    kept = pq.read_table(r.stages["judge"].path / "negatives.parquet").num_rows
    removed = stats["false_negatives"] + (stats["no_verdict"] if policy == "drop" else 0)
    assert kept == sampled - removed
    verdicts = pq.read_table(r.stages["judge"].path / "verdicts.parquet")["verdict"].to_pylist()
    assert verdicts.count("no_verdict") == stats["no_verdict"]


def test_slow_answers_429_500_and_dropped_connections_are_retried(tmp_path):
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def script(req):
        with lock:
            n = seen[req.query] = seen.get(req.query, 0) + 1
        kind = sum(map(ord, req.query)) % 5
        if n == 1 and kind == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        if n == 1 and kind == 1:
            return Reply(status=500)
        if n == 1 and kind == 2:
            return Reply(drop=True)
        if n == 1 and kind == 3:
            return Reply(delay=8.0, content="{\"false_negatives\": []}")  # past the timeout: its answer is lost
        return rule(req)

    with ScriptedServer(rule) as plain:
        expected = negmine.mine(CONFIG, judge_overrides(tmp_path / "plain", plain))
    with ScriptedServer(script) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.timeout=3", "judge.concurrency=8"))
        first_failures = sum(1 for q in seen if sum(map(ord, q)) % 5 < 4)
        assert first_failures > 0 and r.stages["judge"].stats["retries"] == first_failures
        assert server.calls == 60 + first_failures
    # the retried calls reach the same verdicts as a server that never failed
    a = pq.read_table(expected.stages["judge"].path / "verdicts.parquet")
    b = pq.read_table(r.stages["judge"].path / "verdicts.parquet")
    assert a.equals(b)


def test_an_endpoint_that_keeps_failing_stops_cleanly_and_the_rerun_resumes(tmp_path):
    fail = {"on": True}

    def script(req):
        if fail["on"] and sum(map(ord, req.query)) % 3 == 0:
            return Reply(status=503)
        return rule(req)

    with ScriptedServer(script) as server:
        ov = judge_overrides(tmp_path, server, "judge.retries=1", "judge.concurrency=1")
        with pytest.raises(JudgeStopped, match="failed 2 times"):
            negmine.mine(CONFIG, ov)
        assert not (tmp_path / "out").exists()  # nothing published
        assert not list((tmp_path / "cache" / "judge").glob("[0-9a-f]*"))  # no judge entry
        answered = sum(1 for req in server.requests if sum(map(ord, req.query)) % 3)
        assert answered > 0
        fail["on"] = False
        before = server.calls
        r = negmine.mine(CONFIG, ov)
        # the verdicts saved before the stop are not paid for again
        assert server.calls - before == 60 - r.stages["judge"].stats["from_store"]
        assert r.stages["judge"].stats["from_store"] > 0


def test_401_and_404_stop_with_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGMINE_TEST_JUDGE_KEY", "wrong")
    with ScriptedServer(lambda req: Reply(status=401)) as server:
        res = runner.invoke(app, ["run", str(CONFIG), *sum((["--set", o] for o in judge_overrides(
            tmp_path, server, "judge.api_key_env='NEGMINE_TEST_JUDGE_KEY'")), [])])
        queries = [req.query for req in server.requests]
        assert len(queries) <= 4 and len(set(queries)) == len(queries)  # not retried; no call started after it
    assert res.exit_code == 2, res.output
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "HTTP 401" in err[0] and "NEGMINE_TEST_JUDGE_KEY" not in err[0].split("names")[0]
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()
    with ScriptedServer(rule, prefix="/v2") as server:
        ov = judge_overrides(tmp_path, server)
        ov[1] = f"judge.base_url='{server.base_url[:-3]}/v1'"  # the wrong path
        with pytest.raises(ConfigError, match="HTTP 404"):
            negmine.mine(CONFIG, ov)


def test_the_key_is_sent_but_written_to_no_file(tmp_path, monkeypatch):
    secret = "sk-negmine-test-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()
    monkeypatch.setenv("NEGMINE_TEST_JUDGE_KEY", secret)
    with ScriptedServer(rule) as server:
        res = runner.invoke(app, ["run", str(CONFIG), "-v", *sum((["--set", o] for o in judge_overrides(
            tmp_path, server, "judge.api_key_env='NEGMINE_TEST_JUDGE_KEY'")), [])])
        assert res.exit_code == 0, res.output
        assert server.requests and all(req.headers["Authorization"] == f"Bearer {secret}"
                                       for req in server.requests)
    assert secret not in res.output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "provenance.json" for p in files) and any(p.suffix == ".jsonl" for p in files)
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_a_missing_key_variable_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("NEGMINE_TEST_JUDGE_KEY", raising=False)
    with ScriptedServer(rule) as server:
        with pytest.raises(ConfigError, match="NEGMINE_TEST_JUDGE_KEY.*not set"):
            negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.api_key_env='NEGMINE_TEST_JUDGE_KEY'"))
        assert server.calls == 0
    assert not (tmp_path / "cache" / "ingest").exists()


def test_dry_run_prints_the_estimate_and_makes_no_call(tmp_path):
    with ScriptedServer(rule) as server:
        ov = judge_overrides(tmp_path, server)
        res = runner.invoke(app, ["run", str(CONFIG), "-q", "--dry-run", *sum((["--set", o] for o in ov), [])])
        assert res.exit_code == 0, res.output
        assert server.calls == 0 and not (tmp_path / "out").exists()
        assert "60 calls to make" in res.stdout and "180 candidates of 60 queries" in res.stdout
        r = negmine.mine(CONFIG, ov)
        assert server.calls == 60
        # once every verdict is stored, a dry run says so (it never finds an entry of its own to reuse)
        res = runner.invoke(app, ["run", str(CONFIG), "-q", "--dry-run", *sum((["--set", o] for o in ov), [])])
        assert res.exit_code == 0 and "60 already in the verdict store; 0 calls to make" in res.stdout
        assert server.calls == 60 and r.stages["judge"].stats["calls_made"] == 60
    res = runner.invoke(app, ["run", str(CONFIG), "--dry-run", "--set", f"run.cache_dir='{tmp_path / 'c2'}'"])
    assert res.exit_code == 2 and "no [judge] model" in res.output


def test_a_budget_below_the_estimate_stops_before_any_call(tmp_path):
    with ScriptedServer(rule) as server:
        with pytest.raises(JudgeStopped, match="60 calls are needed.*max_calls 59; no call was made"):
            negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.max_calls=59"))
        with pytest.raises(JudgeStopped, match="tokens are needed.*max_tokens 1000; no call was made"):
            negmine.mine(CONFIG, judge_overrides(tmp_path, server, "judge.max_tokens=1000"))
        assert server.calls == 0
        res = runner.invoke(app, ["run", str(CONFIG), *sum((["--set", o] for o in judge_overrides(
            tmp_path, server, "judge.max_calls=59")), [])])
        assert res.exit_code == 2 and res.output.count("error:") == 1


def test_a_budget_reached_by_retries_stops_cleanly_and_keeps_the_verdicts(tmp_path):
    tried: set[str] = set()

    def script(req):  # each query starting with "w" fails once, so retries push the run past 60 requests
        if req.query.startswith("w") and req.query not in tried:
            tried.add(req.query)
            return Reply(status=500)
        return rule(req)

    with ScriptedServer(script) as server:
        ov = judge_overrides(tmp_path, server, "judge.max_calls=60", "judge.concurrency=1", "judge.retries=3")
        with pytest.raises(JudgeStopped, match="max_calls 60 reached"):
            negmine.mine(CONFIG, ov)
        assert server.calls == 60
        assert not (tmp_path / "out").exists()
        assert tried
        good = server.calls - len(tried)  # requests that brought a verdict
    with ScriptedServer(rule) as server:
        r = negmine.mine(CONFIG, judge_overrides(tmp_path, server))
        assert r.stages["judge"].stats["from_store"] == good and server.calls == 60 - good


def test_a_token_budget_reached_by_long_answers_stops_cleanly(tmp_path):
    with ScriptedServer(lambda req: Reply('{"false_negatives": []}', tokens=50_000)) as server:
        ov = judge_overrides(tmp_path, server, "judge.max_tokens=200000", "judge.concurrency=1")
        with pytest.raises(JudgeStopped, match="max_tokens 200000 reached: 250000 tokens spent in 5 calls"):
            negmine.mine(CONFIG, ov)  # the estimate (60 calls of about 2,000 tokens) was under the budget
        assert server.calls == 5  # the fifth answer went over; none started after it
        assert not (tmp_path / "out").exists()


def test_same_inputs_give_identical_outputs_at_any_concurrency(tmp_path):
    outs = []
    for n in (1, 7):
        with ScriptedServer(rule) as server:
            negmine.mine(CONFIG, judge_overrides(tmp_path / str(n), server, f"judge.concurrency={n}",
                                                 "judge.on_false_negative='relabel'"))
        outs.append({p.name: p.read_bytes() for p in (tmp_path / str(n) / "out").glob("*.jsonl")})
    assert outs[0] == outs[1] and outs[0]


def test_keyed_settings_recompute_the_judge_and_speed_settings_do_not(tmp_path):
    with ScriptedServer(rule) as server:
        ov = judge_overrides(tmp_path, server)
        first = negmine.mine(CONFIG, ov).stages["judge"].key
        same = negmine.mine(CONFIG, ov + ["judge.concurrency=2", "judge.timeout=5.0", "judge.max_calls=1000",
                                          "judge.flush_calls=3"])
        assert same.stages["judge"].status == "cached" and same.stages["judge"].key == first
        for setting in ("judge.max_candidates=2", "judge.max_positives=1", "judge.max_chars=100",
                        "judge.on_false_negative='relabel'", "judge.on_no_verdict='drop'", "judge.model='other'",
                        "judge.temperature=0.5", "judge.max_answer_tokens=64"):
            r = negmine.mine(CONFIG, ov + [setting])
            assert r.stages["judge"].status == "computed", setting


@pytest.mark.parametrize("setting", [
    "judge.max_candidates=0", "judge.max_candidates=101", "judge.max_positives=0", "judge.max_chars=0",
    "judge.temperature=nan", "judge.temperature=inf", "judge.temperature=-0.1", "judge.timeout=0",
    "judge.timeout=inf", "judge.retries=-1", "judge.concurrency=0", "judge.max_calls=-1", "judge.max_tokens=-5",
    "judge.retry_backoff=nan", "judge.flush_calls=0", "judge.max_answer_tokens=0", "judge.on='everything'",
    "judge.on_false_negative='flip'", "judge.on_no_verdict=''", "judge.base_url=''", "judge.base_url='localhost:80'",
    "judge.api_key_env='sk-live-123'", "judge.model=' '"])
def test_bad_judge_settings_stop_before_any_work(tmp_path, setting):
    ov = [f"judge.model='m'", "judge.base_url='http://127.0.0.1:9/v1'", f"run.cache_dir='{tmp_path / 'c'}'",
          setting]
    with pytest.raises(ConfigError):
        negmine.mine(CONFIG, ov)
    assert not (tmp_path / "c").exists()
    res = runner.invoke(app, ["run", str(CONFIG), *sum((["--set", o] for o in ov), [])])
    assert res.exit_code == 2 and res.output.startswith("error:") and res.output.count("\n") == 1


@pytest.mark.parametrize("text,n,expected", [
    ('{"false_negatives": [2, 1]}', 3, [1, 2]), ('```json\n{"false_negatives": []}\n```', 3, []),
    ('{"false_negatives": [4]}', 3, None), ('{"false_negatives": [1, 1]}', 3, None),
    ('{"false_negatives": [true]}', 3, None), ('{"answer": [1]}', 3, None), ("[1]", 3, None), ("", 3, None),
    ("Candidates 1 and 2.", 3, None), ('<think>2 fits.</think>\n{"false_negatives": [2]}', 3, [2])])
def test_answers_are_read_strictly(text, n, expected):
    assert parse_answer(text, n) == expected


def test_a_damaged_verdict_store_part_is_dropped_and_its_calls_made_again(tmp_path):
    with ScriptedServer(rule) as server:
        ov = judge_overrides(tmp_path, server, "judge.flush_calls=100")
        r = negmine.mine(CONFIG, ov)
        store = Path(r.stages["judge"].path.parent.parent / "judge-verdicts")
        parts = list(store.rglob("part-*.jsonl"))
        assert len(parts) == 1
        parts[0].write_bytes(parts[0].read_bytes()[:-40])
        negmine.mine(CONFIG, ov, force=True)
        assert server.calls == 120


def test_judged_runs_are_evaluated_on_the_judged_negatives(tmp_path):
    """negmine eval reads the judge's negatives: a judge that calls every candidate a false negative leaves no
    negative to count."""
    from negmine.evaluate import evaluate

    with ScriptedServer(lambda req: verdict(list(range(1, len(req.candidates) + 1)))) as server:
        negmine.mine(CONFIG, judge_overrides(tmp_path, server))
    result = evaluate(tmp_path / "out", eci_model=None)
    assert result["hardness"]["negatives"] == 0


def test_judge_errors_are_negmine_errors():
    assert issubclass(JudgeStopped, NegmineError)


CISI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cisi"


@pytest.mark.skipif(not (CISI / "qrels" / "all.tsv").is_file(), reason="needs ../shared/data/cisi")
def test_an_oracle_judge_removes_the_hidden_positives_on_cisi(tmp_path):
    """negmine eval --holdout-frac 0.3 on CISI: a judge that answers from the full qrels (which the scripted server
    reads) leaves no hidden positive among the negatives, after sampling and on the pool alike."""
    from judge_server import Oracle

    from negmine.evaluate import evaluate_run

    base = [f"input.path='{CISI}'", "sample.rank_max=30", "judge.retry_backoff=0.01"]
    rates = {}
    for name, judge in (("none", None), ("negatives", "negatives"), ("pool", "pool")):
        ov = base + [f"export.dir='{tmp_path / name}'"]
        oracle = Oracle(CISI, max_chars=2000)
        with ScriptedServer(oracle) as server:
            if judge:
                ov += ["judge.model='oracle'", f"judge.base_url='{server.base_url}'", f"judge.on='{judge}'"]
            _, result = evaluate_run(CONFIG, holdout_frac=0.3, overrides=ov, cache_dir=tmp_path / "cache",
                                     eci_model=None)
        assert oracle.unmatched == 0  # every text in a prompt was found in the collection
        fn = result["false_negatives"]
        rates[name] = (fn["false_negatives"], fn["negatives_of_those_queries"])
    assert rates["none"][0] > 0  # BM25's top 30 holds hidden positives to remove
    assert rates["negatives"][0] == 0 and rates["pool"][0] == 0
    assert rates["pool"][1] == rates["none"][1]  # on the pool, the window still fills every query


def test_cache_ls_and_verify_leave_the_verdict_store_alone(tmp_path):
    with ScriptedServer(rule) as server:
        negmine.mine(CONFIG, judge_overrides(tmp_path, server))
    cache = str(tmp_path / "cache")
    res = runner.invoke(app, ["cache", "verify", "--cache-dir", cache, "--remove"])
    assert res.exit_code == 0, res.output
    assert "judge-verdicts" not in res.output
    assert list((tmp_path / "cache" / "judge-verdicts").rglob("part-*.jsonl"))
    ls = runner.invoke(app, ["cache", "ls", "--cache-dir", cache])
    assert ls.exit_code == 0 and "DAMAGED" not in ls.output and "judge " in ls.output


def test_credentials_in_the_url_stay_out_of_messages():
    from negmine.judge import redact

    assert redact("https://user:sk-123@api.example.com:8443/v1?key=sk-456") == "https://api.example.com:8443/v1"


def test_relabelled_positives_carry_their_teacher_scores(tmp_path, tiny_cross_encoder):
    """With a teacher, a relabelled candidate's score joins the positives' scores (FlagEmbedding's pos_scores,
    ids' positive_teacher_scores, margin-mse's positive score), one for one."""
    with ScriptedServer(rule) as server:
        r = negmine.mine(CONFIG, judge_overrides(
            tmp_path, server, "judge.on_false_negative='relabel'", f"score.teacher='{tiny_cross_encoder}'",
            "retrieve.top_k=20", "sample.rank_max=20",
            "export.formats=['flagembedding','ids','margin-mse','labeled-list']", "export.scores=true"))
    relabeled = pq.read_table(r.stages["judge"].path / "relabeled.parquet").to_pylist()
    assert relabeled
    flag = read_jsonl(tmp_path / "out" / "flagembedding.jsonl")
    assert all(len(rec["pos"]) == len(rec["pos_scores"]) for rec in flag)
    ids = {q["query_id"]: q for q in read_jsonl(tmp_path / "out" / "ids.jsonl")}
    for rel in relabeled:
        q = ids[rel["query_id"]]
        i = q["positive_ids"].index(rel["doc_id"])
        assert q["positive_teacher_scores"][i] == pytest.approx(rel["teacher_score"])


def test_a_killed_run_repeats_at_most_the_calls_in_flight(tmp_path):
    """SIGKILL mid-judging: every verdict written before the kill is reused; only the call in flight is made again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def slow(req):
        return Reply(rule(req).content, delay=0.05)

    with ScriptedServer(slow) as server:
        ov = judge_overrides(tmp_path, server, "judge.concurrency=1")
        env = {**os.environ, "PYTHONPATH": str(CONFIG.parents[1]), "NEGMINE_PROGRESS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "negmine", "run", str(CONFIG), "-q",
                                 *sum((["--set", o] for o in ov), [])], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = tmp_path / "cache" / "judge-verdicts"
        deadline = time.monotonic() + 120
        try:
            while len(list(store.rglob("part-*.jsonl"))) < 10 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        saved = len(list(store.rglob("part-*.jsonl")))
        assert 10 <= saved < 60
        before = server.calls
        r = negmine.mine(CONFIG, ov)
        stats = r.stages["judge"].stats
        assert stats["from_store"] >= saved and stats["calls_made"] == 60 - stats["from_store"]
        assert server.calls <= 60 + 1 and server.calls - before == stats["calls_made"]


@pytest.mark.parametrize("mode", ["drop", "relabel", "pool"])
def test_inspect_tells_what_the_judge_did_and_lists_exactly_the_exported_negatives(tmp_path, mode):
    """`negmine inspect` and the report's examples read the judge's verdicts: a judged false negative is shown as
    removed (or relabelled) by the judge, never as a sampled negative, so the sampled ones are the exported ones."""
    from negmine.story import Run

    extra = {"drop": [], "relabel": ["judge.on_false_negative='relabel'"],
             "pool": ["judge.on='pool'", "judge.max_candidates=10"]}[mode]
    with ScriptedServer(rule) as server:
        negmine.mine(CONFIG, judge_overrides(tmp_path, server, *extra))
    ids = {q["query_id"]: q for q in read_jsonl(tmp_path / "out" / "ids.jsonl")}
    judged = 0
    for st in Run(tmp_path / "out").stories(sorted(ids)):
        sampled = [c.doc_id for c in st.candidates if c.outcome == "sampled"]
        assert sampled == ids[st.query_id]["negative_ids"]
        for c in st.candidates:
            if c.code == "judge":
                judged += 1
                assert "test-model" in c.reason and any(is_false_negative(t) for t in (c.text, f"{c.title} {c.text}"))
                assert c.outcome == ("relabelled" if mode == "relabel" else "removed")
                if mode == "relabel":
                    assert c.doc_id in ids[st.query_id]["positive_ids"]
    assert judged > 0
    result = runner.invoke(app, ["inspect", str(tmp_path / "out"), sorted(ids)[0]])
    assert result.exit_code == 0, result.output
