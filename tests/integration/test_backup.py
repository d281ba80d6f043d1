"""Backup, wipe, restore: the device flow works with the same device keys."""
import os
import shutil
import subprocess
import uuid

import requests

from conftest import ROOT, Stack, _finish
from qkms_proto_py import Device

TOOL = os.path.join(ROOT, "tools", "qkms-backup.sh")


def run_tool(st, *args):
    p = subprocess.run(["sh", TOOL, *args], env=st.env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def test_backup_wipe_restore(tmp_path):
    st = Stack("qkms-bk")
    restored = None
    try:
        st.start()
        assert st.admin("POST", "/v1/admin/policies",
                        json={"name": "all", "type_a": "*", "type_b": "*"}).status_code == 201
        ids = []
        for t in ("vehicle", "encryptor"):
            did = f"{t[:3].upper()}-{uuid.uuid4().hex[:8]}"
            assert st.admin("POST", "/v1/admin/devices", json={"device_id": did, "type": t}).status_code == 201
            ids.append(did)
        docs = [st.admin("POST", f"/v1/admin/devices/{d}/fill", json={"plaintext": True}).json()["plaintext"]
                for d in ids]
        veh, enc = (Device.from_fill(d) for d in docs)
        kcv_before = st.admin("GET", f"/v1/admin/devices/{ids[0]}/keys?kcv=true").json()["keys"]
        archive = str(tmp_path / "qkms.tar")
        run_tool(st, "backup", archive)
        assert os.stat(archive).st_mode & 0o077 == 0
        assert subprocess.run(["sh", TOOL, "backup", archive], env=st.env).returncode != 0  # no overwrite

        # Disaster: kmsd, the database and the token are gone.
        admin_token = st.admin_token
        st.destroy()

        restored = Stack("qkms-rs", init=False)
        run_tool(restored, "restore", archive)
        restored.start()

        assert restored.admin_token == admin_token
        kcv_after = restored.admin("GET", f"/v1/admin/devices/{ids[0]}/keys?kcv=true").json()["keys"]
        assert [k["kcv"] for k in kcv_after] == [k["kcv"] for k in kcv_before]
        # The devices, holding their original keys, get a session key.
        sid = "R-" + uuid.uuid4().hex
        ka = veh.key_request(sid, enc.device_id)
        ra = requests.post(restored.url + ka.path, data=ka.raw, headers={"Content-Type": "application/json"})
        assert ra.status_code == 200, ra.text
        kb = enc.key_request(sid, veh.device_id)
        rb = requests.post(restored.url + kb.path, data=kb.raw, headers={"Content-Type": "application/json"})
        assert veh.open_key_response(ka, ra.json()).key == enc.open_key_response(kb, rb.json()).key
        # Restoring over an existing deployment is refused.
        p = subprocess.run(["sh", TOOL, "restore", archive], env=restored.env, capture_output=True, text=True)
        assert p.returncode != 0 and "already holds a database" in p.stderr
    finally:
        if os.path.isdir(st.state):
            st.destroy()
        if restored is not None:
            _finish(restored)
