"""The doors into the engine: the command line, the spaCy component, Ray for big corpora, and the bench."""
