#!/usr/bin/env python3
"""Disparity of one stereo pair (defaults: bundled stand-in model and sample pair). See flashstereo-demo --help."""
from flashstereo_ros.tools.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
