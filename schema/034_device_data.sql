-- 034_device_data: frames between a device and the platform under one of
-- its device keys, without a session (issue 19; seed 000: the cipher
-- machine decrypts meters' uplink and encrypts the downlink for the
-- business platform). docs/sealing.md "Data under a device key", docs/api.md
-- "Crypto services". As seal_state (032) for session keys: the receiver's
-- replay window and the sender's next seq per device key and direction,
-- seqs as their unsigned 64-bit bit pattern. No secret here; the rows go
-- with the device's row (devices are revoked, not deleted, so a key index's
-- rows stay with its tombstoned key: at most 2 x 256 per device).
CREATE TABLE device_seal_state (
    device_pk   bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key_index   integer NOT NULL CHECK (key_index BETWEEN 0 AND 255),
    direction   smallint NOT NULL CHECK (direction IN (1, 2)),
    recv_top    bigint,
    recv_bitmap bigint NOT NULL DEFAULT 0,
    send_next   bigint,
    PRIMARY KEY (device_pk, key_index, direction)
);
