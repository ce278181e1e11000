#!/usr/bin/env python3
"""The QDQ-on / QDQ-off study against any two OpenAI-compatible endpoints.

Thin wrapper of :mod:`vllm_qdq.study` (the code lives in the overlay package so the image
ships it). Examples::

    scripts/study.py run --qdq http://localhost:8001 --baseline http://localhost:8002 \\
        --model meta-llama/Llama-3.1-8B-Instruct --out out/study --tasks gsm8k --limit 200
    scripts/study.py report out/study
"""

import sys
from pathlib import Path

try:
    from vllm_qdq.study import main
except ImportError:  # running from a checkout without the overlay installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overlay"))
    from vllm_qdq.study import main

if __name__ == "__main__":
    sys.exit(main())
