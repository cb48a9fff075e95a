#!/usr/bin/env python3
"""flashstereo-gen-post-calib: post_runner calibration tensors (step 3 of docs/INT8.md).

Thin wrapper of the console entry point.
"""
from flashstereo_ros.tools.gen_post_calib_data import main

if __name__ == "__main__":
    raise SystemExit(main())
