"""The production audit (fake nodes): realised F1 with an interval, the drift alarm, recalibration; CLI tune/report."""

from __future__ import annotations

import pytest

from babybear import BabybearError, Circuit
from babybear.tuning.audit import Audit, load_run
from babybear.types import Prediction
from tests.conftest import synthetic_texts


@pytest.fixture
def fitted(toy_circuit):
    return toy_circuit.fit(synthetic_texts(600), progress=False)


def drift(circuit: Circuit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The babybear turns confidently wrong: it drops its last entity but its evidence looks as before."""
    node = circuit.node("memo")
    original = node.predict_batch
    monkeypatch.setattr(node, "predict_batch", lambda texts: [Prediction(p.spans[:-1], p.evidence) for p in original(texts)])


def test_audit_estimates_realised_f1_and_stays_quiet_without_drift(fitted):
    audit = Audit(fitted, fraction=0.3, seed=1)
    answers = audit(synthetic_texts(400, seed=5))
    assert len(answers) == 400 and len(audit.queue) > 50
    audit.flush()
    report = audit.report()
    assert report["audited"] == sum(audit.by_babybear) > 30
    assert report["interval"][0] <= report["realised_f1"] <= report["interval"][1]
    assert report["realised_f1"] >= 0.97 and not report["alarm"]


def test_drift_raises_the_alarm_and_recalibration_restores_the_budget(fitted, monkeypatch, tmp_path):
    drift(fitted, monkeypatch)
    audit = Audit(fitted, fraction=0.5, seed=2)
    audit(synthetic_texts(400, seed=6))
    audit.flush()
    report = audit.report()
    assert report["alarm"] and report["below_budget"] and report["interval"][1] < fitted.budget.min_entity_f1
    run = load_run(audit.save(tmp_path / "audit.json"), fitted)
    assert run.n == len(audit.texts)
    fitted.tune(run=run)
    after = Audit(fitted, fraction=0.5, seed=3)
    after(synthetic_texts(400, seed=7))
    after.flush()
    assert after.report()["realised_f1"] >= fitted.budget.min_entity_f1


def test_a_node_failing_during_flush_leaves_that_text_out_and_the_audit_whole(fitted, monkeypatch):
    audit = Audit(fitted, fraction=1.0, batch_size=16)
    texts = synthetic_texts(60, seed=8)
    audit(texts)
    queued = len(audit.queue)
    node, original = fitted.node("memo"), fitted.node("memo").predict_batch

    def fails_on_one(batch):
        if texts[3] in batch:
            raise ValueError("cannot read this text")
        return original(batch)

    monkeypatch.setattr(node, "predict_batch", fails_on_one)
    audit.flush()
    assert texts[3] not in audit.texts and audit.report()["left_out_after_a_node_failed"] == 1
    assert all(len(p) == len(audit.texts) == queued - 1 for p in audit.preds.values())

    audit(texts[:20])
    monkeypatch.setattr(node, "predict_batch", lambda batch: (_ for _ in ()).throw(BabybearError("model not installed")))
    with pytest.raises(BabybearError, match="not installed"):
        audit.flush()  # a configuration error: nothing of the batch is recorded, the queue is kept
    assert len(audit.queue) == 20 and all(len(p) == len(audit.texts) for p in audit.preds.values())
    monkeypatch.setattr(node, "predict_batch", original)
    audit.flush()
    assert not audit.queue and len(audit.texts) == queued - 1 + 20
    assert len(audit.cached_run().tokens) == len(audit.texts)


def test_texts_the_mamabear_failed_on_are_not_audited(toy_circuit):
    from tests.conftest import FragileMamabear, Memorizer

    circuit = Circuit("toy").add("memo", Memorizer()).add("mama", FragileMamabear()).connect("memo", "mama")
    circuit.fit(synthetic_texts(300), progress=False)
    audit = Audit(circuit, fraction=1.0)
    answers = audit([f"BREAK-MAMA Zed{i} met Quill{i}" for i in range(5)] + synthetic_texts(20, seed=3))
    failed = [a for a in answers if a.error]
    assert failed and all(a.text not in {t for t, _, _ in audit.queue} for a in failed)
    assert sum(audit.answered.values()) == len(answers) - len(failed)


def test_reporting_does_not_change_which_texts_are_sampled_and_repeats_itself(fitted):
    texts = synthetic_texts(200, seed=5)
    quiet, chatty = Audit(fitted, fraction=0.3), Audit(fitted, fraction=0.3)
    for audit in (quiet, chatty):
        audit(texts[:100])
        audit.flush()
    first = chatty.report()
    assert chatty.report() == first  # the same interval every time
    quiet(texts[100:])
    chatty(texts[100:])
    assert [t for t, _, _ in quiet.queue] == [t for t, _, _ in chatty.queue]


def test_bad_fraction_and_empty_audit_are_explained(fitted):
    with pytest.raises(BabybearError, match="fraction must be in"):
        Audit(fitted, fraction=0)
    with pytest.raises(BabybearError, match="no checked texts yet"):
        Audit(fitted).cached_run()


def test_cli_tune_and_report(fitted, tmp_path, capsys):
    from babybear.doors.cli import main

    fitted.save(tmp_path / "f")
    assert main(["tune", str(tmp_path / "f"), "--budget", "0.9", "--method", "per_edge"]) == 0
    assert Circuit.load(tmp_path / "f").budget.min_entity_f1 == 0.9
    assert main(["tune", str(tmp_path / "f"), "--budget", "0.95"]) == 0
    assert "memo->mama" in capsys.readouterr().out
    assert main(["tune", str(tmp_path / "f"), "--cost", "mama=1", "--cost", "memo=0"]) == 0
    assert Circuit.load(tmp_path / "f").report_["cost_override"] == {"mama": 1.0, "memo": 0.0}
    capsys.readouterr()
    assert main(["report", str(tmp_path / "f"), "--out", str(tmp_path / "priced")]) == 0
    assert "(price per token (cost_override), entity-F1" in capsys.readouterr().out  # the frontier is in the prices tuned on
    assert main(["tune", str(tmp_path / "f"), "--cost", "mama"]) == 2
    assert "expected NODE=NUMBER" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "f"), "--out", str(tmp_path / "plots"), "--price-per-hour", "3", "--watts", "500"]) == 0
    out = capsys.readouterr().out
    assert "Pareto frontier" in out and "mamabear calls" in out
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"frontier.png", "answered.png", "calibration.png", "price.png"}
    assert main(["tune", str(tmp_path / "f"), "--budget", "1.5"]) == 2
    assert "min_entity_f1" in capsys.readouterr().err
    assert main(["tune", str(tmp_path / "f"), "--off", "memo"]) == 0
    off = Circuit.load(tmp_path / "f")
    assert not off.slot("memo").enabled and off.report_["kept_off"] == ["memo"]
    assert main(["tune", str(tmp_path / "f"), "--off", "nope"]) == 2
    assert "off: unknown node nope" in capsys.readouterr().err


def test_a_handful_of_audited_errors_does_not_raise_the_alarm(fitted, monkeypatch):
    """One or two audited texts give the bootstrap no spread (one: a zero-width interval): no alarm on them."""
    from babybear.tuning.audit import MIN_AUDITED

    drift(fitted, monkeypatch)
    audit = Audit(fitted, fraction=1.0, seed=2)
    audit(synthetic_texts(400, seed=6)[:2])
    audit.flush()
    report = audit.report()
    assert 0 < report["audited"] < MIN_AUDITED and report["below_budget"]
    assert not report["alarm"]
