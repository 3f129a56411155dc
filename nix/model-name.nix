# The store name of a fetched model: { url, name ? null } -> string.
#
# Plain Nix (no nixpkgs), so tests/nix/check.sh tests it directly. A store
# path name may only hold letters, digits and `+-._?=`, must not start with
# `.` and is at most 211 characters long; a download URL often breaks all of
# that (`?download=true`, `&format=SafeTensor`, `%20`). The name is built
# this way:
# - an explicit `name` wins; otherwise the last path segment of the URL,
#   without its query (`?...`) and fragment (`#...`);
# - every run of characters a store name cannot hold, `%XX` escapes
#   included, becomes one `_`; leading dots go;
# - a Civitai download (`.../api/download/models/123?type=Model&format=SafeTensor`)
#   has no extension in its path; the `format` query parameter gives it
#   (SafeTensor -> .safetensors, PickleTensor -> .ckpt, GGUF -> .gguf);
# - too long: the stem is cut, the extension kept; no letter or digit
#   left: "model".
#
# The store name is what `ls /nix/store` shows; the file name the UI shows
# is the key under services.sd-webui-forge.models, which is independent.
{
  url,
  name ? null,
}:
let
  inherit (builtins)
    concatStringsSep
    elemAt
    filter
    head
    isList
    isString
    length
    map
    match
    split
    stringLength
    substring
    ;

  maxLength = 211;

  beforeQuery = head (split "[?#]" url);
  query =
    let
      m = match "[^?#]*[?]([^#]*).*" url;
    in
    if m == null then "" else head m;
  segments = filter (s: isString s && s != "") (split "/" beforeQuery);
  lastSegment = if segments == [ ] then "" else elemAt segments (length segments - 1);

  formatParam =
    let
      m = match "(.*&)?format=([^&]*)(&.*)?" query;
    in
    if m == null then null else elemAt m 1;
  extensionOfFormat = {
    SafeTensor = ".safetensors";
    PickleTensor = ".ckpt";
    GGUF = ".gguf";
  };
  formatExtension = if formatParam == null then "" else extensionOfFormat.${formatParam} or "";

  hasSuffix =
    suffix: s:
    stringLength s >= stringLength suffix
    && substring (stringLength s - stringLength suffix) (stringLength suffix) s == suffix;

  sanitize =
    s:
    concatStringsSep "" (
      map (part: if isList part then "_" else part) (split "(%[0-9A-Fa-f]{2}|[^A-Za-z0-9+._?=-])+" s)
    );
  dropLeadingDots = s: head (match "[.]*(.*)" s);

  fromUrl =
    if formatExtension != "" && !hasSuffix formatExtension lastSegment then
      lastSegment + formatExtension
    else
      lastSegment;

  clean = dropLeadingDots (sanitize (if name != null then name else fromUrl));

  # Keep the extension when cutting a long name.
  extMatch = match "(.*)([.][A-Za-z0-9]{1,16})" clean;
  ext = if extMatch == null then "" else elemAt extMatch 1;
  stem = if extMatch == null then clean else head extMatch;
  shortened =
    if stringLength clean <= maxLength then
      clean
    else
      substring 0 (maxLength - stringLength ext) stem + ext;
in
# Nothing but separators left (an emoji name, say): a plain fallback.
if match ".*[A-Za-z0-9].*" shortened == null then "model" else shortened
