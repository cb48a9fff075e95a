#!/usr/bin/env python3
"""Benchmark (see flashstereo-bench --help): stock vs GPU-resident, precision sweep, GPU extras."""
from flashstereo_ros.tools.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
