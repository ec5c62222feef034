"""toolchain worker"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command()
@click.option("--target", "target_specs", multiple=True, metavar="TARGET",
              help="A target this node offers (repeatable): a built-in name or a TOML file. Each must be usable here.")
@click.option("--address", metavar="HOST:PORT", help="The head node's address, to join its cluster.")
@click.option("--head", is_flag=True, help="Start a new cluster with this node as its head (it may offer targets too).")
@click.option("--port", type=click.IntRange(1, 65535), default=6379, show_default=True, help="With --head: the port to listen on.")
@click.option("--node-ip-address", metavar="IP", help="The address this node registers with (Ray's own option).")
@click.option("--num-cpus", type=click.IntRange(0), help="CPUs Ray may schedule other work on (profiling jobs take none).")
@click.option("--object-store-mb", type=click.IntRange(64), help="Object store size in MiB (default: Ray's, 30% of memory).")
@click.option("--temp-dir", type=click.Path(file_okay=False), help="Ray's session folder (with --head).")
@click.option("--ray-option", "ray_options", multiple=True, metavar="KEY=VALUE",
              help="Another of `ray start`'s options, without the dashes (repeatable), e.g. node-manager-port=6380.")
@click.option("--block", is_flag=True, help="Stay in the foreground until stopped (Ctrl-C stops the node).")
@click.option("--dry-run", is_flag=True, help="Check the targets and print the `ray start` line; start nothing.")
@json_option
def worker(target_specs, address, head, port, node_ip_address, num_cpus, object_store_mb, temp_dir, ray_options, block,
           dry_run, as_json) -> None:
    """Start a Ray node that offers targets to `profile --cluster` and `compare --cluster`.

    \b
    Each --target is checked first: the node refuses a target this machine cannot run (a missing
    execution provider, architecture or CPU flag), with the fix. The node then runs
    `ray start` with the targets as custom resources (toolchain-target:NAME, one unit each:
    a node measures one job of a target at a time). The line is printed, so it can be run by
    hand or put in a service unit. Every node needs this project, the same Ray and Python
    versions, and the onnxruntime build its targets need (nodes may differ: onnxruntime,
    onnxruntime-openvino, onnxruntime-gpu). Stop a node with `ray stop` (or Ctrl-C with --block).

    \b
    Examples:
      toolchain worker --head --port 6379                        # the head, offering nothing
      toolchain worker --target x86-cpu --address 10.0.0.5:6379
      toolchain worker --target openvino-cpu --address 10.0.0.5:6379   # onnxruntime-openvino here
      toolchain compare m.onnx m.int8.onnx --targets x86-cpu,openvino-cpu --cluster 10.0.0.5:6379
    """
    import os
    import subprocess
    import sys

    from toolchain.fleet.worker import NodeOptions, check_targets_here, command_line, start_command

    options = NodeOptions(targets=tuple(target_specs), address=address, head=head, port=port,
                          node_ip_address=node_ip_address, num_cpus=num_cpus, object_store_mb=object_store_mb,
                          temp_dir=temp_dir, block=block,
                          ray_options=tuple(ray_options))
    targets = check_targets_here(options.targets)
    cmd = start_command(options, [t.name for t in targets])
    line = command_line(cmd)
    if dry_run:
        emit({"command": cmd, "line": line, "targets": [t.name for t in targets]}, as_json,
             lambda console: console.print(line, soft_wrap=True, markup=False))
        return
    click.echo(f"starting a Ray node offering {', '.join(t.name for t in targets) or 'no target'}: {line}", err=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    sys.stdout.flush()
    sys.stderr.flush()
    if block:  # the node's processes stay children of this one: Ctrl-C or a signal to this process stops it
        os.execvpe(cmd[0], cmd, env)
    code = subprocess.call(cmd, env=env)
    if code:
        raise SystemExit(code)
