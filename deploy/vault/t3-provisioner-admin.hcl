# t3-provisioner-admin: the least a token needs for `t3-provision-users` admin runs
# (`--apply-policies`, minting, `--prune`, `--offboard`), instead of a root token. Apply once, as root:
#
#   vault policy write t3-provisioner-admin deploy/vault/t3-provisioner-admin.hcl
#   vault token create -policy=t3-provisioner-admin -ttl=1h     # short-lived, for one setup run
#
# Guard such a token like root all the same: `sudo` on create-orphan lets it mint tokens with any
# policy. Assumes the KV v2 mount is `secret`; adapt the sys/mounts path if vault.mount differs.
# The per-user policies (`claude-auth-sync-<os-user>`) are rendered by the provisioner itself
# (`claude-auth-sync policy <os-user>` prints one), so the roster stays the only list of users.

# The provisioner checks its admin token first.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# --apply-policies: the KV v2 mount must exist ...
path "sys/mounts/secret" {
  capabilities = ["read"]
}

# ... and every roster user's policy is read, compared and written; --prune lists and deletes
# the policies of users no longer in the roster.
path "sys/policies/acl" {
  capabilities = ["list"]
}

path "sys/policies/acl/claude-auth-sync-*" {
  capabilities = ["create", "read", "update", "delete"]
}

# Minting the per-user periodic orphan tokens (orphan tokens need sudo) ...
path "auth/token/create-orphan" {
  capabilities = ["create", "update", "sudo"]
}

# ... and revoking the ones they replace, or those of removed users, by accessor. An accessor
# recorded by an older provisioner (no Vault address in the state file) is looked up first, so
# one minted at another Vault is never counted as revoked here.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

# --offboard USER --destroy-secret: read the user's KV v2 metadata, then delete it (every version
# and the metadata), at the default template's paths and the {host} template's. Nothing else:
# no secret data is read. Adapt the prefixes if vault.path_template differs.
path "secret/metadata/workstation/claude-users/*" {
  capabilities = ["read", "delete"]
}

path "secret/metadata/workstation/claude-hosts/*" {
  capabilities = ["read", "delete"]
}

# --migrate-to-host-paths (once, when moving to a vault.path_template with {host}): read the
# per-user copies, check and write the per-host paths. Uncomment for that run only.
# path "secret/data/workstation/claude-users/*"     { capabilities = ["read"] }
# path "secret/data/workstation/claude-hosts/*"     { capabilities = ["create", "read"] }
# (secret/metadata/workstation/claude-hosts/* is readable already: see --destroy-secret above.)
