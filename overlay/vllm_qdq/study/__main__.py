"""``python -m vllm_qdq.study SUB ...``: the study's command line (:func:`vllm_qdq.study.run.main`)."""

import sys

from .run import main

sys.exit(main())
