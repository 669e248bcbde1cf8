"""Check that the installed llama.cpp runs a quantized model on this CPU.

setup.sh runs this in a child process. A llama-cpp-python wheel compiled for
another CPU (pip reuses a wheel it built earlier whatever CMAKE_ARGS say now)
can die with "Illegal instruction" on the first quantized matrix product; the
only reliable test is to do one. Exit codes: 0 it works, 3 nothing to probe
with (the embedded model's packages are missing), anything else (a signal
above all) means the build must be replaced.
"""

from __future__ import annotations

import sys

from longvideo_r1.errors import LVR1Error
from longvideo_r1.llm.embedded import resolve_embedded_model


def main() -> int:
    """Load the embedded default GGUF and evaluate a few tokens with it."""
    try:
        path = resolve_embedded_model(None)
    except LVR1Error as error:
        print(f"probe: no model to probe with: {error}", file=sys.stderr)
        return 3

    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
    tokens = model.tokenize(b"A long video, seen in parts.")
    model.eval(tokens)
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip(" |")
    print(f"probe: llama.cpp {llama_cpp.__version__} ran {path.name} ({info})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
