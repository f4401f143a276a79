"""The llama.cpp side of bench/compare_llamacpp.py, run in a Python that has llama-cpp-python.

Loads a GGUF once, then answers each line of stdin (JSON: prompt ids, decode ids) with one JSON
line: seconds for the prompt in one batch, and for the single-token decode steps together.
Run: PY bench/llamacpp_peer.py MODEL.gguf THREADS N_CTX   (driven by compare_llamacpp.py)
"""
import json
import sys
import time

from llama_cpp import Llama


def main() -> None:
    path, threads, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=n_ctx,
                verbose=False)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(job["prompt"])
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for token in job["decode"]:
            llm.eval([token])
        print(json.dumps({"prefill_s": prefill_s, "decode_s": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
