"""Node families: rules, CRF, transformer students, mamabear backends, and gates.

Each module depends on the engine's contracts (``babybear.node``) only; heavy libraries are imported in
``warm_up`` so that reading a circuit never imports torch.
"""
