"""config/*.yaml, launch/stereo.launch.py, config/stereo.rviz and msg/ agree with the node.

The launch file's logic is tested without `launch` (not installable here), including a real run of the
node with the wiring it computes for the ZED config; where launch_ros is importable, the launch file
itself is run.
"""
import configparser
import importlib.util
import math
import re
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from flashstereo_ros import node as node_module  # noqa: E402
from flashstereo_ros import resources, synthetic  # noqa: E402
from flashstereo_ros.node import INPUT_TOPICS, OUTPUT_TOPICS, FlashStereoNode  # noqa: E402
from flashstereo_ros.node_params import PARAMETERS  # noqa: E402
from flashstereo_ros.ros_testing import (NodeProcess, StereoClient, camera_infos, encode, image_msg,  # noqa: E402
                                         init_context, node_command, now_ns, ros_env, spin_until)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
LAUNCH_FILE = ROOT / "launch" / "stereo.launch.py"
RCLPY_PARAMETERS = {"use_sim_time", "start_type_description_service"}  # declared by rclpy itself
SMALL = resources.bundled_models(".onnx", (64, 128))
SMALL_OVERRIDES = {"feat_engine": str(SMALL[0]), "post_engine": str(SMALL[1]), "warmup": False}
DOMAIN = 65


def launch_module():
    spec = importlib.util.spec_from_file_location("stereo_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_parameters(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["/**"]["ros__parameters"]


@pytest.fixture(scope="module")
def context():
    ctx = init_context(DOMAIN)
    yield ctx
    rclpy.shutdown(context=ctx)


def declared(node) -> set:
    return set(node.list_parameters([], 0).names) - RCLPY_PARAMETERS


def test_there_are_example_configs_for_common_cameras():
    assert {p.name for p in CONFIGS} >= {"stereo.yaml", "zed.yaml", "realsense.yaml"}


def test_yaml_and_node_declare_the_same_parameters_with_the_same_defaults(context):
    node = FlashStereoNode(parameter_overrides={"feat_engine": str(SMALL[0]), "post_engine": str(SMALL[1])},
                           context=context)
    try:
        in_yaml = node_parameters(ROOT / "config" / "stereo.yaml")
        assert declared(node) == set(in_yaml) == {spec.name for spec in PARAMETERS}
        defaults = {spec.name: spec.default for spec in PARAMETERS}
        assert in_yaml == defaults  # config/stereo.yaml documents the defaults
        for name in in_yaml:
            assert node.describe_parameter(name).description, f"{name} has no description"
    finally:
        node.destroy_node()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_into_the_node(config):
    """rcl parses the file (params-file), and the node accepts every value (types, ranges, choices)."""
    assert set(node_parameters(config)) == {spec.name for spec in PARAMETERS}
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(config)], domain_id=DOMAIN)
    try:
        node = FlashStereoNode(parameter_overrides=SMALL_OVERRIDES, context=ctx)
        try:
            for name, value in node_parameters(config).items():
                if name not in SMALL_OVERRIDES:
                    assert node.get_parameter(name).value == value, name
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_parameter_line_is_documented(config):
    lines = config.read_text().splitlines()
    for name in node_parameters(config):
        line = next(line for line in lines if re.match(rf"\s+{name}:", line))
        assert "#" in line or config.name != "stereo.yaml", f"{config.name}: {name} has no comment"


def test_launch_finds_the_node_executable():
    found = launch_module().executable()
    assert found.get("package") == "flashstereo_ros" or Path(found["executable"]).name == "stereo_node"


def test_colcon_installs_the_node_where_ros2_run_looks():
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    expected = "$base/lib/flashstereo_ros"
    assert config["develop"]["script_dir"] == expected and config["install"]["install_scripts"] == expected


def test_launch_file_arguments_match_the_node():
    launch = launch_module()
    assert set(launch.ARGUMENTS) == {"config", "namespace", "feat_engine", "post_engine", "device", "use_sim_time"}
    assert set(launch.PARAMETER_ARGUMENTS) <= {spec.name for spec in PARAMETERS} | {"use_sim_time"}
    assert set(launch.PARAMETER_ARGUMENTS) <= set(launch.ARGUMENTS)
    assert set(launch.INPUT_KEYS.values()) == set(INPUT_TOPICS)
    assert launch.NODE_NAME == node_module.DEFAULT_NODE_NAME
    assert f"{launch.EXECUTABLE} = flashstereo_ros.node:main" in (ROOT / "setup.py").read_text()
    assert Path(launch.default_config()).resolve() == (ROOT / "config" / "stereo.yaml").resolve()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_launch_remaps_only_the_node_inputs(config):
    settings = launch_module().node_settings(str(config))
    assert {source for source, _ in settings["remappings"]} <= set(INPUT_TOPICS)
    assert all(target and " " not in target for _, target in settings["remappings"])
    assert settings["namespace"] and settings["parameters"] == [str(config)]


def test_launch_arguments_override_the_config():
    settings = launch_module().node_settings(str(ROOT / "config" / "zed.yaml"), namespace="front",
                                             feat_engine="/m/f.engine", post_engine="", device="cpu",
                                             use_sim_time="True")
    assert settings["namespace"] == "front"
    assert settings["parameters"][1] == {"feat_engine": "/m/f.engine", "device": "cpu", "use_sim_time": True}
    assert ("left/image_rect", "/zed/zed_node/left/color/rect/image") in settings["remappings"]
    with pytest.raises(ValueError, match="use_sim_time must be true or false"):
        launch_module().node_settings(str(ROOT / "config" / "zed.yaml"), use_sim_time="yes please")


def test_launch_refuses_unknown_wiring_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("flashstereo_launch:\n  ros__parameters:\n    left_imgae: /x\n")
    with pytest.raises(ValueError, match="left_imgae"):
        launch_module().node_settings(str(bad))
    with pytest.raises(FileNotFoundError):
        launch_module().node_settings(str(tmp_path / "missing.yaml"))


def command_line(settings: dict) -> list[str]:
    """What launch_ros makes of the Node action: the executable with --ros-args."""
    args = node_command() + ["--ros-args", "-r", f"__node:={settings['name']}", "-r", f"__ns:=/{settings['namespace']}"]
    for item in settings["parameters"]:
        if isinstance(item, str):
            args += ["--params-file", item]
        else:
            args += [arg for key, value in item.items() for arg in ("-p", f"{key}:={value}")]
    return args + [arg for source, target in settings["remappings"] for arg in ("-r", f"{source}:={target}")]


def test_zed_wiring_from_the_launch_config_works_over_real_topics(tmp_path, context):
    """The ZED config's remaps and namespace, as the launch file computes them: bgra8 in, /zed/disparity out."""
    settings = launch_module().node_settings(str(ROOT / "config" / "zed.yaml"), feat_engine=str(SMALL[0]),
                                             post_engine=str(SMALL[1]))
    node = NodeProcess(command_line(settings), ros_env(DOMAIN), tmp_path / "node.log")
    ros = rclpy.create_node("zed_stand_in", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(ros)
    try:
        zed_topics = [dict(settings["remappings"])[topic] for topic in INPUT_TOPICS]
        client = StereoClient(ros, "zed", outputs=["disparity", "points2"], input_topics=zed_topics)
        assert spin_until(executor, client.matched, 30), node.log()
        scene = synthetic.make_scene("planes", 90, 160, seed=4)  # not the engine size, not a multiple of 32
        stamp = now_ns(ros)
        client.publish_pair(image_msg(encode(scene.left, "bgra8"), "bgra8"),
                            image_msg(encode(scene.right, "bgra8"), "bgra8"),
                            camera_infos(scene.focal_px, scene.baseline_m, 160, 90), stamp)
        disparity = spin_until(executor, lambda: client.latest("disparity", stamp), 15)
        assert disparity is not None, node.log()
        assert (disparity.image.width, disparity.image.height) == (160, 90)
        cloud = spin_until(executor, lambda: client.latest("points2", stamp), 5)  # zed.yaml: points_stride 2
        assert (cloud.height, cloud.width) == (math.ceil(90 / 2), math.ceil(160 / 2))
    finally:
        ros.destroy_node()
        code = node.stop()
    assert code == 0


def test_rviz_config_shows_the_node_outputs_in_the_default_namespace():
    rviz = yaml.safe_load((ROOT / "config" / "stereo.rviz").read_text())
    displays = {d["Class"].split("/")[-1]: [] for d in rviz["Visualization Manager"]["Displays"]}
    for d in rviz["Visualization Manager"]["Displays"]:
        displays[d["Class"].split("/")[-1]].append(d)
    namespace = launch_module().node_settings(str(ROOT / "config" / "stereo.yaml"))["namespace"]
    image_topics = {d["Topic"]["Value"] for d in displays["Image"]}
    assert image_topics == {f"/{namespace}/{INPUT_TOPICS[0]}", f"/{namespace}/{OUTPUT_TOPICS['color']}",
                            f"/{namespace}/{OUTPUT_TOPICS['depth']}"}
    (cloud,) = displays["PointCloud2"]
    assert cloud["Topic"]["Value"] == f"/{namespace}/{OUTPUT_TOPICS['points']}"
    assert cloud["Color Transformer"] == "RGB8" and cloud["Position Transformer"] == "XYZ"


def test_stage_timing_definition_matches_the_node_and_the_companion_package():
    definition = (ROOT / "msg" / "StageTiming.msg").read_text()
    companion = ROOT / "interfaces" / "flashstereo_interfaces" / "msg" / "StageTiming.msg"
    assert companion.read_text() == definition
    fields = [line.split("#")[0].split() for line in definition.splitlines()]
    names = {f[1] for f in fields if len(f) == 2}
    import inspect

    source = inspect.getsource(node_module.typed_timing)
    assert set(re.findall(r"msg\.(\w+) = ", source)) == names
    adapter = pytest.importorskip("rosidl_adapter.parser")
    spec = adapter.parse_message_string("flashstereo_interfaces", "StageTiming", definition)
    assert {f.name for f in spec.fields} == names


LAUNCH_RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
arguments = [arg.split(":=", 1) for arg in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=arguments)]))
sys.exit(service.run())
"""


def test_the_launch_file_runs_where_launch_ros_is_installed(tmp_path, context):
    """As `ros2 launch flashstereo_ros stereo.launch.py namespace:=launched ...` does (LaunchService, main thread)."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS 2 install here)")
    import sys

    launched = NodeProcess([sys.executable, "-c", LAUNCH_RUNNER, str(LAUNCH_FILE), "namespace:=launched",
                            f"feat_engine:={SMALL[0]}", f"post_engine:={SMALL[1]}"], ros_env(DOMAIN),
                           tmp_path / "launch.log")
    ros = rclpy.create_node("launch_check", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(ros)
    try:
        client = StereoClient(ros, "launched", outputs=["disparity"])
        assert spin_until(executor, client.matched, 60), launched.log()
        scene = synthetic.make_scene("planes", 64, 128, seed=5)
        stamp = now_ns(ros)
        client.publish_pair(image_msg(scene.left, "rgb8"), image_msg(scene.right, "rgb8"),
                            camera_infos(scene.focal_px, scene.baseline_m, 128, 64), stamp)
        assert spin_until(executor, lambda: client.latest("disparity", stamp), 20), launched.log()
    finally:
        ros.destroy_node()
        launched.stop(30.0)
    print(launched.log())


def test_integer_values_for_float_parameters_are_accepted(context):
    node = FlashStereoNode(parameter_overrides={**SMALL_OVERRIDES, "max_depth": 10, "min_depth": 1}, context=context)
    try:
        assert node.get_parameter("max_depth").value == 10.0 and node.get_parameter("min_depth").value == 1.0
    finally:
        node.destroy_node()


@pytest.mark.parametrize("overrides,message", [
    ({"device": "gpu"}, "device must be one of"),
    ({"qos_reliability": "sometimes"}, "qos_reliability must be one of"),
    ({"min_depth": 5.0, "max_depth": 2.0}, "max_depth"),
])
def test_bad_start_up_parameters_are_named(context, overrides, message):
    with pytest.raises(ValueError, match=message):
        FlashStereoNode(parameter_overrides={**SMALL_OVERRIDES, **overrides}, context=context)


def test_console_entry_names_a_missing_model_and_exits_1(tmp_path):
    import subprocess

    run = subprocess.run(node_command() + ["--ros-args", "-p", f"feat_engine:={tmp_path}/nope.onnx", "-p",
                                           f"post_engine:={tmp_path}/nope2.onnx"],
                         env=ros_env(DOMAIN), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "error:" in run.stderr and "nope.onnx" in run.stderr, run.stderr


def test_console_entry_names_a_bad_params_file_and_refuses_two_namespace_sources(tmp_path):
    import subprocess

    run = subprocess.run(node_command() + ["--ros-args", "--params-file", str(tmp_path / "nope.yaml")],
                         env=ros_env(DOMAIN), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("error:") and "nope.yaml" in run.stderr, run.stderr
    run = subprocess.run(node_command() + ["--namespaces", "front", "rear", "--ros-args", "-r", "__ns:=/robot"],
                         env=ros_env(DOMAIN), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "__ns" in run.stderr, run.stderr


def test_diagnostics_run_on_sim_time_before_any_clock(context):
    """use_sim_time with no /clock yet (simulation not started): ROS time stands still, diagnostics must not."""
    node = FlashStereoNode(parameter_overrides={**SMALL_OVERRIDES, "use_sim_time": True}, context=context)
    listener = rclpy.create_node("diagnostics_listener", context=context)
    received = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", received.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    try:
        assert node.get_clock().now().nanoseconds == 0  # no /clock: sim time has not started
        assert spin_until(executor, lambda: received, 5.0), "no diagnostics on sim time without /clock"
    finally:
        executor.remove_node(node)
        executor.remove_node(listener)
        listener.destroy_node()
        node.destroy_node()
