# The polkit rule module.nix installs for the sleep inhibitor
# (gpu.inhibitSleep): logind asks polkit before it lets a user other than
# root take a sleep lock in block mode, and polkit's default answer for a
# process outside a login session is no. Plain Nix, so tests/nix/check.sh
# renders it without nixpkgs and loads it into a real polkitd.
{ user }:
''
  polkit.addRule(function (action, subject) {
    if (action.id == "org.freedesktop.login1.inhibit-block-sleep" &&
        subject.user == ${builtins.toJSON user}) {
      return polkit.Result.YES;
    }
  });
''
