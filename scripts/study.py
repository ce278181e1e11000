#!/usr/bin/env python3
"""The QDQ-on / QDQ-off study against any two OpenAI-compatible endpoints.

Thin command-line front of :mod:`vllm_qdq.study.run` (``python -m vllm_qdq.study`` is the same;
the code lives in the overlay package so the image ships it; the overlay must be installed,
as ``make env`` and the image do). Examples::

    scripts/study.py run --qdq http://localhost:8001 --baseline http://localhost:8002 \\
        --model meta-llama/Llama-3.1-8B-Instruct --out out/study --tasks gsm8k --limit 200
    scripts/study.py report out/study
"""

import sys

from vllm_qdq.study.run import main

if __name__ == "__main__":
    sys.exit(main())
