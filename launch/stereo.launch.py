"""Start the flashstereo_ros stereo node with parameters and camera topic wiring from one YAML file.

    ros2 launch flashstereo_ros stereo.launch.py                                  # config/stereo.yaml
    ros2 launch flashstereo_ros stereo.launch.py config:=/path/zed.yaml namespace:=front \
        feat_engine:=/models/feature_runner.engine post_engine:=/models/post_runner.engine
    ros2 launch flashstereo_ros stereo.launch.py use_sim_time:=true device:=cpu         # simulation, no GPU

The YAML's `/**: ros__parameters` go to the node; its `flashstereo_launch: ros__parameters` section
says where the camera's topics are (namespace, left/right image and camera_info names), turned into
remappings here. Launch arguments override the YAML when they are not empty.
The file imports `launch` only inside generate_launch_description, so its logic is testable without it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

PACKAGE = "flashstereo_ros"
EXECUTABLE = "stereo_node"
NODE_NAME = "flashstereo"
LAUNCH_SECTION = "flashstereo_launch"
# YAML key -> the node's own input topic name it remaps
INPUT_KEYS = {"left_image": "left/image_rect", "left_camera_info": "left/camera_info",
              "right_image": "right/image_rect", "right_camera_info": "right/camera_info"}
ARGUMENTS = {
    "config": "YAML with node parameters (/**) and topic wiring (flashstereo_launch); default: config/stereo.yaml",
    "namespace": "namespace of the node and its outputs; empty: the config's flashstereo_launch namespace",
    "feat_engine": "feature_runner model file; empty: the config's feat_engine",
    "post_engine": "post_runner model file; empty: the config's post_engine",
    "device": "auto, cuda or cpu; empty: the config's device",
    "use_sim_time": "true: stamps and timers follow /clock (simulation, bag play --clock); empty: the config's "
                    "use_sim_time, else false",
}
PARAMETER_ARGUMENTS = ("feat_engine", "post_engine", "device", "use_sim_time")  # they override node parameters
BOOLEAN_ARGUMENTS = {"use_sim_time"}


def default_config() -> str:
    """config/stereo.yaml of the installed package (ament), or beside this file in a source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / "config" / "stereo.yaml"
        if installed.is_file():
            return str(installed)
    except Exception:  # not installed with ament (pip install, source checkout)
        pass
    return str(Path(__file__).resolve().parent.parent / "config" / "stereo.yaml")


def executable() -> dict:
    """package + executable on a colcon/ament install; else the console script on PATH (pip install)."""
    try:
        from ament_index_python.packages import get_package_prefix

        if (Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / EXECUTABLE).exists():
            return {"package": PACKAGE, "executable": EXECUTABLE}
    except Exception:  # not registered with ament: a pip install
        pass
    found = shutil.which(EXECUTABLE)
    return {"executable": found} if found else {"package": PACKAGE, "executable": EXECUTABLE}


def parameter_value(name: str, text: str):
    """A launch argument's text as the node parameter's type (launch arguments are strings)."""
    if name not in BOOLEAN_ARGUMENTS:
        return text
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
    return value == "true"


def node_settings(config: str, namespace: str = "", **overrides: str) -> dict:
    """What the Node action gets: name, namespace, parameters (the file, then the non-empty PARAMETER_ARGUMENTS
    in overrides), remappings."""
    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    wiring = (data.get(LAUNCH_SECTION) or {}).get("ros__parameters") or {}
    unknown = set(wiring) - set(INPUT_KEYS) - {"namespace"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} in {LAUNCH_SECTION}; known: "
                         f"namespace, {', '.join(INPUT_KEYS)}")
    remappings = [(topic, str(wiring[key])) for key, topic in INPUT_KEYS.items()
                  if wiring.get(key) and str(wiring[key]) != topic]
    unknown = set(overrides) - set(PARAMETER_ARGUMENTS)
    if unknown:
        raise TypeError(f"not launch arguments that set node parameters: {sorted(unknown)}")
    overrides = {name: parameter_value(name, value) for name, value in overrides.items() if value}
    return {"name": NODE_NAME, "namespace": namespace or str(wiring.get("namespace") or ""),
            "parameters": [str(path)] + ([overrides] if overrides else []), "remappings": remappings}


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def start_node(context):
        values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
        settings = node_settings(values["config"] or default_config(), values["namespace"],
                                 **{name: values[name] for name in PARAMETER_ARGUMENTS})
        return [Node(**executable(), output="screen", emulate_tty=True, **settings)]

    defaults = {"config": default_config()}
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=defaults.get(name, ""), description=text)
         for name, text in ARGUMENTS.items()]
        + [OpaqueFunction(function=start_node)])
