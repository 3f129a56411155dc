# Render a NixOS-style service definition (the attribute set ./unit.nix
# returns) to the text of a .service file, the way NixOS does it
# (nixos/lib/systemd-lib.nix: commonUnitText, serviceToUnit, attrsToSection),
# without nixpkgs. For tests: tests/nix/check.sh feeds the result to
# `systemd-analyze security` and greps it.
#
# One difference, on purpose: NixOS writes restart and reload triggers into a
# store file and puts that file's path in X-Restart-Triggers= or
# X-Reload-Triggers=; here the triggers themselves are written, as no store
# is at hand.
service:
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    isBool
    isList
    map
    toJSON
    ;

  concatStrings = concatStringsSep "";
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: attrs: if cond then attrs else { };
  get = name: default: service.${name} or default;

  toOption =
    x:
    if isBool x then
      (if x then "true" else "false")
    else
      toString x;

  # Lists become repeated keys, as in NixOS.
  attrsToSection =
    attrs:
    concatStrings (
      concatLists (
        mapAttrsToList (
          name: value: map (x: "${name}=${toOption x}\n") (if isList value then value else [ value ])
        ) attrs
      )
    );

  listKey = key: name: optionalAttrs (get name [ ] != [ ]) { ${key} = toString (get name [ ]); };

  unitConfig =
    get "unitConfig" { }
    // listKey "Requires" "requires"
    // listKey "Wants" "wants"
    // listKey "After" "after"
    // listKey "Before" "before"
    // listKey "BindsTo" "bindsTo"
    // listKey "PartOf" "partOf"
    // listKey "X-Restart-Triggers" "restartTriggers"
    // listKey "X-Reload-Triggers" "reloadTriggers"
    // optionalAttrs (get "description" "" != "") { Description = service.description; }
    // listKey "Documentation" "documentation";

  # NixOS turns `path` (packages, plus coreutils, findutils, grep, sed and
  # systemd, which it always adds) into Environment=PATH=<each>/bin:<each>/sbin.
  # Without nixpkgs the packages are plain directories; `defaultPath` stands
  # for the ones NixOS adds.
  pathDirs = get "path" [ ] ++ get "defaultPath" [ ];
  pathValue = concatStringsSep ":" (
    map (p: "${toString p}/bin") pathDirs ++ map (p: "${toString p}/sbin") pathDirs
  );
  environment = get "environment" { } // optionalAttrs (pathDirs != [ ]) { PATH = pathValue; };
  environmentLines = concatStrings (
    mapAttrsToList (name: value: "Environment=${toJSON "${name}=${value}"}\n") environment
  );

  changeLines =
    if get "reloadIfChanged" false then
      "X-ReloadIfChanged=true\n"
    else if !(get "restartIfChanged" true) then
      "X-RestartIfChanged=false\n"
    else
      "";

  wantedBy = get "wantedBy" [ ];
in
''
  [Unit]
  ${attrsToSection unitConfig}
  [Service]
  ${environmentLines}${changeLines}${attrsToSection (get "serviceConfig" { })}''
+ optionalString (wantedBy != [ ]) ''

  [Install]
  WantedBy=${concatStringsSep " " wantedBy}
''
