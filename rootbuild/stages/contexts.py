"""Named build contexts (``--build-context NAME=VALUE``) as the stage graph sees them.

Job: the key under which a ``FROM`` word, a stage name or a ``--from``/``from=`` word looks
up a named context, computed the way BuildKit's ``dockerui.NamedContext`` does: the word
parsed as a normalised image name, then its familiar form without ``:latest``
(``docker.io/library/alpine:latest``, ``alpine:latest`` and ``alpine`` all look up
``alpine``; ``alpine:3.20`` looks up ``alpine:3.20``).

Rules (BuildKit ``frontend/dockerfile/dockerfile2llb/convert.go``, docs of
``docker buildx build --build-context``):
- A stage whose name is a named context is replaced by it: its instructions never run,
  and every ``FROM``/``--from``/``from=`` naming the stage gets the context.
- Otherwise a ``FROM`` word that is no earlier stage, and a ``--from``/``from=`` word that
  is no stage, gets the named context of its key before it is taken as an image.
- A context nothing names is unused; no error.
- Pure: no I/O.
"""

from __future__ import annotations

_DEFAULT_DOMAINS = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


def context_key(word: str) -> str | None:
    """The named-context key ``word`` looks up; None for a word that is no image name
    (a blank, an upper-case repository: BuildKit then finds no context for it)."""
    name, at, digest = word.partition("@")
    for domain in _DEFAULT_DOMAINS:
        if name.startswith(domain):
            name = name[len(domain):]
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
            break
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon before the last slash is a port)
        repository, tag = name, ""
    if not repository or repository != repository.lower() or any(c.isspace() for c in word):
        return None
    if tag == "latest" and not at:
        tag = ""
    return repository + (":" + tag if tag else "") + at + digest
