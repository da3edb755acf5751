"""`babybear run` survives a kill: answers are written as they come, `--resume` finishes the file; progress."""

from __future__ import annotations

from tests.conftest import synthetic_texts


def test_a_stream_answers_its_first_texts_before_reading_far_ahead(toy_circuit):
    circuit = toy_circuit.fit(synthetic_texts(300), progress=False)
    read = 0

    def texts():
        nonlocal read
        for text in synthetic_texts(5000, seed=1):
            read += 1
            yield text

    answers = circuit.stream(texts())
    next(answers)
    assert read <= 200  # two small first chunks, not two of 10,000
    assert sum(1 for _ in answers) == 4999
