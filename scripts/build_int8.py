#!/usr/bin/env python3
"""flashstereo-build-int8: INT8 feature_runner by explicit quantization (step 2 of docs/INT8.md).

Thin wrapper of the console entry point.
"""
from flashstereo_ros.tools.build_int8 import main

if __name__ == "__main__":
    raise SystemExit(main())
