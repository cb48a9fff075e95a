"""flashstereo_ros: an ament_python ROS 2 package that also installs with plain pip."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "flashstereo_ros"
SHARE = f"share/{PACKAGE}"
ROS_DISTRO = "kilted"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="GPU-resident two-stage FoundationStereo inference for ROS 2 (DisparityImage, depth, points)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/models/*/*.onnx", "data/models/*/*.pt2", "data/models/*/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (SHARE, ["package.xml"]),
        (f"{SHARE}/launch", glob("launch/*.py")),
        (f"{SHARE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"{SHARE}/kernels", glob("kernels/*.cu") + glob("kernels/*.cuh")),
        (f"{SHARE}/msg", glob("msg/*.msg")),
        (f"{SHARE}/assets", glob("assets/*.png") + glob("assets/*.yaml")),
    ],
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8", "onnx>=1.15", "onnxruntime>=1.18", "PyYAML>=6"],
    extras_require={
        "ros": [f"ros-{ROS_DISTRO}-{name}" for name in
                ("rclpy", "sensor-msgs", "stereo-msgs", "diagnostic-msgs", "std-msgs")] + ["ros-rclpy[fastrtps]"],
        "cuda": ["cuda-python>=12.6", "nvidia-cuda-nvrtc"],
        "standin": ["torch>=2.5", "onnxscript>=0.3"],
        "test": ["pytest>=7"],
    },
    entry_points={
        "console_scripts": [
            "flashstereo-demo = flashstereo_ros.tools.demo:main",
            "flashstereo-make-standin = flashstereo_ros.standin:main",
            "flashstereo-make-scene = flashstereo_ros.tools.scene:main",
            "flashstereo-node = flashstereo_ros.node:main",
            "stereo_node = flashstereo_ros.node:main",
            "flashstereo-bench = flashstereo_ros.tools.bench:main",
            "flashstereo-download-calib = flashstereo_ros.tools.download_calib_data:main",
            "flashstereo-build-int8 = flashstereo_ros.tools.build_int8:main",
            "flashstereo-gen-post-calib = flashstereo_ros.tools.gen_post_calib_data:main",
            "flashstereo-build-int8-post = flashstereo_ros.tools.build_int8_post:main",
            "flashstereo-int8-quality = flashstereo_ros.tools.int8_quality:main",
        ],
    },
    zip_safe=False,
)
