#!/usr/bin/env python3
"""flashstereo-download-calib: INT8 calibration pairs at the engine size (step 1 of docs/INT8.md).

Thin wrapper of the console entry point.
"""
from flashstereo_ros.tools.download_calib_data import main

if __name__ == "__main__":
    raise SystemExit(main())
