"""Node families: rules, CRF, transformer students, mamabear backends, and gates; and ``models``, where the
models they load come from (offline aliases, ``babybear models install``).

Modules named with a leading ``_`` are a family's private parts (the student's training in
``_student_training``, its ONNX export in ``_student_export``, ...): import the node, not them.

Each module depends on the engine's contracts (``babybear.node``) only; heavy libraries are imported in
``warm_up`` so that reading a circuit never imports torch.
"""
