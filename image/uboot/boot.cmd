# lucid A/B boot script for U-Boot (QEMU virt, Raspberry Pi 3 / Zero 2 W).
# Source of boot.scr on p1 (bootctl); compiled by the image tool with `mkimage -T script`.
# @ROOT_A@ / @ROOT_B@ are filled in from the board manifest.
#
# The slot comes from lucid.env on p1, in `env export -t` text form ("name=value" lines):
#   lucid_active=a|b   the committed slot
#   lucid_try=a|b|     a one-shot trial armed by lucidd before it reboots into an update
# A trial is consumed here, BEFORE the kernel starts: the file is rewritten to
# "lucid_active=<active>\nlucid_try=\n" (copied byte for byte from lucid-<active>.env),
# so any reset during the trial boots the committed slot again unless lucidd commits.
# The boot partitions are slot-independent: this script adds root= and lucid.slot=.

setenv lucid_active a
setenv lucid_try
if load ${devtype} ${devnum}:1 ${kernel_addr_r} lucid.env; then
  env import -t ${kernel_addr_r} ${filesize} lucid_active lucid_try
else
  echo "lucid: no lucid.env on ${devtype} ${devnum}:1, booting slot a"
fi
if test "${lucid_active}" != "b"; then
  setenv lucid_active a
fi

setenv slot ${lucid_active}
if test -n "${lucid_try}"; then
  if test "${lucid_try}" = "a" || test "${lucid_try}" = "b"; then
    setenv slot ${lucid_try}
  fi
  if load ${devtype} ${devnum}:1 ${kernel_addr_r} lucid-${lucid_active}.env; then
    fatwrite ${devtype} ${devnum}:1 ${kernel_addr_r} lucid.env ${filesize}
  else
    echo "lucid: lucid-${lucid_active}.env missing: refusing an unconsumable trial"
    setenv slot ${lucid_active}
  fi
fi

if test "${slot}" = "b"; then
  setenv lucid_bootpart 3
  setenv lucid_root @ROOT_B@
else
  setenv lucid_bootpart 2
  setenv lucid_root @ROOT_A@
fi
echo "lucid: slot ${slot} (active ${lucid_active}), boot partition ${lucid_bootpart}"

setenv lucid_args
if load ${devtype} ${devnum}:${lucid_bootpart} ${kernel_addr_r} bootargs.env; then
  env import -t ${kernel_addr_r} ${filesize} lucid_args
fi
if test -n "${fdtfile}" && test -e ${devtype} ${devnum}:${lucid_bootpart} dtbs/${fdtfile}; then
  load ${devtype} ${devnum}:${lucid_bootpart} ${fdt_addr_r} dtbs/${fdtfile}
  setenv lucid_fdt ${fdt_addr_r}
elif test -n "${fdt_addr}"; then
  setenv lucid_fdt ${fdt_addr}
else
  setenv lucid_fdt ${fdtcontroladdr}
fi
load ${devtype} ${devnum}:${lucid_bootpart} ${ramdisk_addr_r} initrd.img
setenv lucid_initrd_size ${filesize}
load ${devtype} ${devnum}:${lucid_bootpart} ${kernel_addr_r} Image
setenv bootargs "${lucid_args} root=${lucid_root} lucid.slot=${slot}"
booti ${kernel_addr_r} ${ramdisk_addr_r}:${lucid_initrd_size} ${lucid_fdt}
echo "lucid: booting slot ${slot} failed"
