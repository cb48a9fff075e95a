#!/usr/bin/env python3
"""flashstereo-build-int8-post: INT8 post_runner by explicit quantization (step 4 of docs/INT8.md).

Thin wrapper of the console entry point.
"""
from flashstereo_ros.tools.build_int8_post import main

if __name__ == "__main__":
    raise SystemExit(main())
