"""Render a drive's network file the way cloud-init does in a guest, without a guest.

Run with Debian's python3 and PYTHONPATH set to an unpacked cloud-init (see
scripts/cloud-init-fetch.sh), for example:

    PYTHONPATH=/var/cache/hvroute-test/cloud-init/25/usr/lib/python3/dist-packages \
        /usr/bin/python3 tests/cloudinit/render.py openstack netplan \
        --known-macs '{"52:54:00:00:00:01": "eth0"}' < network_data.json

Input (stdin):
  openstack  an OpenStack network_data.json (config-2 drive); it goes through
             cloudinit.sources.helpers.openstack.convert_net_json, as DataSourceConfigDrive does
  nocloud    a NoCloud network-config (netplan v2 YAML, cidata drive)
Renderer:
  netplan    cloudinit.net.netplan.Renderer: a v2 config is passed through unchanged
  eni        cloudinit.net.eni.Renderer (/etc/network/interfaces, as on Debian 12 images)

Output (stdout): one JSON object {"cloudinit": VERSION, "text": RENDERED, "netplan":
PARSED_YAML_OR_NULL}. "text" is exactly what the renderer writes (for netplan, the body of
/etc/netplan/50-cloud-init.yaml after cloud-init's header line).

Nothing here touches the host's network, /sys or /etc: the NIC names come from --known-macs,
and the helpers that would look at real interfaces are replaced by stubs, as cloud-init's own
unit tests do.
"""

import argparse
import json
import sys

import yaml

from cloudinit import net, util, version
from cloudinit.net import eni, netplan, network_state


def no_host_lookups():
    """Stub out everything the conversion would ask the running system."""
    net.get_interfaces_by_mac = lambda *a, **k: {}
    net.get_ib_hwaddrs_by_interface = lambda *a, **k: {}
    util.udevadm_settle = lambda *a, **k: None
    if hasattr(netplan, "netplan_api_write_yaml_file"):
        netplan.netplan_api_write_yaml_file = lambda *a, **k: False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source", choices=["openstack", "nocloud"])
    p.add_argument("renderer", choices=["netplan", "eni"])
    p.add_argument("--known-macs", default="{}", help="JSON object MAC -> interface name")
    args = p.parse_args()
    no_host_lookups()

    raw = sys.stdin.read()
    if args.source == "openstack":
        from cloudinit.sources.helpers import openstack

        known_macs = json.loads(args.known_macs)
        config = openstack.convert_net_json(json.loads(raw), known_macs=known_macs)
    else:
        config = yaml.safe_load(raw)
        if "network" in config:
            config = config["network"]

    if args.renderer == "netplan":
        # An explicit feature list keeps the renderer from running `netplan info`.
        renderer = netplan.Renderer(config={"features": ["ipv6-mtu"], "postcmds": False})
        state = network_state.parse_net_config_data(config, renderer=renderer)
        text = renderer._render_content(state)
        parsed = yaml.safe_load(text)
    else:
        renderer = eni.Renderer(config={})
        state = network_state.parse_net_config_data(config, renderer=renderer)
        text = renderer._render_interfaces(state)
        parsed = None

    json.dump(
        {"cloudinit": version.version_string(), "text": text, "netplan": parsed},
        sys.stdout,
        indent=1,
        sort_keys=True,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
