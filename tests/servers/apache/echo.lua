-- Content handler of the test resource server (see start.sh): answers every request that got
-- past mod_auth_openidc with 200 and a JSON echo of the request and of the token's claims.
-- /healthz is not protected and answers "ok".

local function esc(s)
  return (s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == '\\' then return '\\\\' end
    if c == '\n' then return '\\n' end
    if c == '\r' then return '\\r' end
    if c == '\t' then return '\\t' end
    return string.format('\\u%04x', c:byte())
  end))
end

local function str(v)
  if v == nil then return 'null' end
  return '"' .. esc(tostring(v)) .. '"'
end

-- Claims as mod_auth_openidc exported them (OIDC_CLAIM_<name>; arrays are joined with ",").
local CLAIMS = { 'sub', 'client_id', 'scope', 'aud', 'iss', 'jti', 'iat', 'exp' }

function handle(r)
  if r.uri == '/healthz' then
    r.content_type = 'text/plain'
    r:puts('ok\n')
    return apache2.OK
  end

  -- mod_lua's r:requestbody() reads POST and PUT bodies with a Content-Length only: other
  -- bodies (other methods, Transfer-Encoding: chunked) are not read and echoed as null.
  local body
  if (r.method == 'POST' or r.method == 'PUT') and r.headers_in['Transfer-Encoding'] == nil then
    body = r:requestbody() or ''
  end

  local claims = {}
  for _, name in ipairs(CLAIMS) do
    local v = r.subprocess_env['OIDC_CLAIM_' .. name]
    if v ~= nil then claims[#claims + 1] = str(name) .. ':' .. str(v) end
  end

  r.content_type = 'application/json'
  r.headers_out['Cache-Control'] = 'no-store'
  r:puts('{"method":' .. str(r.method)
    .. ',"path":' .. str(r.uri)
    .. ',"query":' .. str(r.args)
    .. ',"user":' .. str(r.user)
    .. ',"claims":{' .. table.concat(claims, ',') .. '}'
    .. ',"body_len":' .. (body and tostring(#body) or 'null')
    .. ',"body":' .. str(body)
    .. '}\n')
  return apache2.OK
end
