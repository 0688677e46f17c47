-- A key's expiry and scope restrictions (api/admin/service.py, api/scopes.py). `expires_at`: unix seconds, null
-- for a key that never expires; an expired key is refused from that second on. `scopes`: a JSON array of scope
-- identifiers, null or empty for all permissions (OpenAI: "an empty array means All permissions").
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
